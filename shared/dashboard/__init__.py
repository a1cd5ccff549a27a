"""The operator dashboard: server-rendered pages over Firestore (runs, decisions, uploads,
alerts, the champion index) and, for one ISBN, the MLflow registry. `create_app` in
shared/dashboard/app.py; functions/dashboard serves it."""

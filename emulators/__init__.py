"""The local cloud: real Google emulators, MLflow and the functions, wired as on GCP."""

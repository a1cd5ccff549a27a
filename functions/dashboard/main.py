"""Cloud Function `dashboard` (HTTP): the operator dashboard (shared/dashboard), every path
of the function's URL handed to its Flask app."""
import functions_framework

from shared.config import settings
from shared.dashboard.app import create_app
from shared.logs import configure

configure()
app = create_app(settings())


@functions_framework.http
def dashboard(request):
    with app.request_context(request.environ):
        return app.full_dispatch_request()

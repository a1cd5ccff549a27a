"""Local alert receivers, so the alerts the monitor sends can be seen without Slack or a
mail server: a Slack-compatible incoming webhook (POST JSON with ``text``, answered ``ok``
as Slack does) and an SMTP server (aiosmtpd). What they receive is appended to the alert
inbox (shared/dashboard/inbox.py) that the dashboard's alerts page shows.

    python -m emulators.receivers --webhook-port 8087 --smtp-port 8025 --inbox .state/alert-inbox.jsonl
"""
from __future__ import annotations

import argparse
import json
import signal
import threading
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller

from shared.dashboard import inbox

READY = "receivers ready"
MAX_BODY_BYTES = 1024 * 1024


def webhook_server(port: int, inbox_path: Path) -> ThreadingHTTPServer:
    class Webhook(BaseHTTPRequestHandler):
        def do_GET(self):  # the health check `up` waits on
            self._answer(200, "ok")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return self._answer(413, "payload_too_large")
            try:
                payload = json.loads(self.rfile.read(length) or b"")
            except ValueError:
                payload = None
            # Slack answers a body that is not a JSON object with text as invalid_payload / no_text.
            if not isinstance(payload, dict):
                return self._answer(400, "invalid_payload")
            if not payload.get("text") and not payload.get("blocks"):
                return self._answer(400, "no_text")
            inbox.append(inbox_path, "slack", path=self.path, text=payload.get("text", ""), payload=payload)
            self._answer(200, "ok")

        def _answer(self, status: int, body: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):  # one inbox line per message is the record
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Webhook)


class MailHandler:
    def __init__(self, inbox_path: Path):
        self.inbox_path = inbox_path

    async def handle_DATA(self, server, session, envelope) -> str:
        mail = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        body = mail.get_body(preferencelist=("plain",))
        inbox.append(self.inbox_path, "email", subject=str(mail.get("Subject", "")), sender=envelope.mail_from,
                     to=list(envelope.rcpt_tos), text=body.get_content() if body else "")
        return "250 Message accepted for delivery"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.receivers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhook-port", type=int, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--inbox", type=Path, required=True)
    args = parser.parse_args()
    args.inbox.parent.mkdir(parents=True, exist_ok=True)
    smtp = Controller(MailHandler(args.inbox), hostname="127.0.0.1", port=args.smtp_port)
    smtp.start()
    http = webhook_server(args.webhook_port, args.inbox)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=http.shutdown).start())
    print(f"{READY}: webhook http://127.0.0.1:{args.webhook_port}/, smtp 127.0.0.1:{args.smtp_port}, "
          f"inbox {args.inbox}", flush=True)
    try:
        http.serve_forever()
    finally:
        http.server_close()
        smtp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

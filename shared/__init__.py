"""bookcast: the importable library behind the Cloud Functions, the CLI and the local cloud."""

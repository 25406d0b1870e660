"""`weightscope-server` (or `python -m app.cli`): serve, migrate, worker, gc, keys."""

from __future__ import annotations

import argparse
import sys

from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weightscope-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="migrate, then serve the API with embedded workers")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--processes", type=int, help="API processes serving the port (default: settings, 1)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    sub.add_parser("worker", help="run one job worker in this process (for scale-out)")
    gc = sub.add_parser("gc", help="remove unreferenced blobs and stale staging files")
    gc.add_argument("--grace", type=float, help="seconds a blob must be untouched (default: settings)")
    key_cmd = sub.add_parser("keys", help="manage API keys")
    key_sub = key_cmd.add_subparsers(dest="action", required=True)
    create = key_sub.add_parser("create", help="create a key; the secret is printed once")
    create.add_argument("name")
    revoke = key_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    args = parser.parse_args(argv)

    flags = {"host": "host", "port": "port", "processes": "api_processes"}
    overrides = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None) is not None}
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    from storage.db import migrate

    if args.command == "migrate":
        migrate(settings.db_url)
        print(f"database at {settings.db_url} is up to date")
        return 0

    migrate(settings.db_url)
    from .services import Services

    services = Services.from_settings(settings)
    if args.command == "serve":
        from .main import InsecureBinding, check_binding
        from .serving import serve

        try:
            check_binding(services)
        except InsecureBinding as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return serve(settings, services)
    if args.command == "worker":
        from .jobs.worker import Worker
        from .observability import configure_logging

        configure_logging(settings.log_level)
        Worker(services).run_forever()
        return 0
    if args.command == "gc":
        from storage.gc import collect_garbage

        report = collect_garbage(services.sessions, services.blobs, settings.gc_grace_seconds if args.grace is None else args.grace)
        print(f"removed {report.blobs_removed} blobs and {report.staging_removed} staging files")
        return 0
    if args.command == "keys":
        from storage import keys

        with services.writing() as session:
            if args.action == "create":
                row, secret = keys.create(session, args.name)
                session.flush()
                print(f"id: {row.id}\nkey: {secret}\n(the key is shown only now; it is stored hashed)")
                return 0
            ok = keys.revoke(session, args.id)
        print("revoked" if ok else "no such active key")
        return 0 if ok else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())

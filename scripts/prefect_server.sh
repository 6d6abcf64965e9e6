#!/usr/bin/env bash
# A Prefect server for this project: the component that keeps schedules, deployments, work
# pools and the history of flow runs (Prefect's temporary server, started by a plain
# `python -m pipeline.flow`, schedules nothing). docs/orchestration.md has the whole recipe.
#
#   scripts/prefect_server.sh              in the foreground (Ctrl-C stops it)
#   scripts/prefect_server.sh --background  detached; log and pid in $PREFECT_HOME/server.{log,pid}
#   scripts/prefect_server.sh --stop        stop the detached one
#
# Environment:
#   PREFECT_HOME       the server's state (default: .prefect/ in the repository, git-ignored)
#   PREFECT_SERVER_API_HOST / PREFECT_SERVER_API_PORT   where it listens (127.0.0.1:4200;
#                      0.0.0.0 to serve workers on other machines)
#   PREFECT_API_DATABASE_CONNECTION_URL   its database: SQLite at $PREFECT_HOME/prefect.db
#                      by default; for a team, Postgres:
#                      postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect
#   PREFECT_BIN        the prefect command (default: .venv/bin/prefect, else prefect on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
HOST=${PREFECT_SERVER_API_HOST:-127.0.0.1}
PORT=${PREFECT_SERVER_API_PORT:-4200}
PREFECT_BIN=${PREFECT_BIN:-.venv/bin/prefect}
[ -x "$PREFECT_BIN" ] || PREFECT_BIN=prefect
mkdir -p "$PREFECT_HOME"
PID_FILE="$PREFECT_HOME/server.pid"
LOG_FILE="$PREFECT_HOME/server.log"
CLIENT_HOST=$HOST
[ "$CLIENT_HOST" = 0.0.0.0 ] && CLIENT_HOST=$(hostname -f 2>/dev/null || hostname)
API_URL="http://$CLIENT_HOST:$PORT/api"

say_how_to_use() {
  local db=${PREFECT_API_DATABASE_CONNECTION_URL:-sqlite: $PREFECT_HOME/prefect.db}
  db=$(printf '%s' "$db" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')  # no password on screen
  echo "prefect server: $API_URL (UI: http://$CLIENT_HOST:$PORT), database $db"
  echo "in each shell that runs, serves or works on flows:"
  echo "  export PREFECT_API_URL=$API_URL"
}

case "${1:-}" in
  --stop)
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      kill -TERM -- "-$(cat "$PID_FILE")" 2>/dev/null || kill -TERM "$(cat "$PID_FILE")"
      rm -f "$PID_FILE"
      echo "prefect server stopped"
    else
      echo "no prefect server running from $PID_FILE"
    fi
    exit 0 ;;
  --background)
    shift
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      echo "a prefect server is already running (pid $(cat "$PID_FILE"))"
      say_how_to_use
      exit 0
    fi
    setsid "$PREFECT_BIN" server start --host "$HOST" --port "$PORT" "$@" >>"$LOG_FILE" 2>&1 < /dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 120); do
      if "${PYTHON:-python3}" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" \
           "http://127.0.0.1:$PORT/api" 2>/dev/null; then
        say_how_to_use
        echo "(pid $(cat "$PID_FILE"), log $LOG_FILE; stop it with scripts/prefect_server.sh --stop)"
        exit 0
      fi
      if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "the prefect server exited; the end of $LOG_FILE:" >&2
        tail -20 "$LOG_FILE" >&2
        exit 1
      fi
      sleep 1
    done
    echo "the prefect server did not answer in 120 s; see $LOG_FILE" >&2
    exit 1 ;;
esac

say_how_to_use
exec "$PREFECT_BIN" server start --host "$HOST" --port "$PORT" "$@"

#!/usr/bin/env bash
# Nchan (nginx + libnginx-mod-nchan), the reference server the benchmark measures side by side.
#
#   scripts/nchan.sh start [DIR] [PORT]   installs the packages with apt-get when missing, writes
#                                         DIR/nchan.conf, starts nginx (state, pid, logs under DIR)
#   scripts/nchan.sh stop  [DIR]
#
# Defaults: DIR=/tmp/nchan-ref, PORT=9080, loopback only.
# Subscribe: GET http://127.0.0.1:PORT/sub/<channel> (text/event-stream);
# publish:   POST http://127.0.0.1:PORT/pub/<channel> (body = data).
set -euo pipefail
CMD=${1:-start}
DIR=${2:-/tmp/nchan-ref}
PORT=${3:-9080}
MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
case "$CMD" in
  start)
    if ! command -v nginx >/dev/null || [ ! -e "$MODULE" ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
    fi
    mkdir -p "$DIR/tmp"
    DIR=$(cd "$DIR" && pwd)
    if [ -f "$DIR/nchan.pid" ] && kill -0 "$(cat "$DIR/nchan.pid")" 2>/dev/null; then
      echo "nchan already running (master pid $(cat "$DIR/nchan.pid"))"; exit 0
    fi
    cat >"$DIR/nchan.conf" <<CONF
load_module $MODULE;
daemon on;
pid nchan.pid;
worker_processes auto;          # one per core
worker_rlimit_nofile 20000;     # raise with the hard open-files limit where allowed
error_log error.log warn;
events {
    use epoll;
    worker_connections 19500;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path       tmp/proxy;
    fastcgi_temp_path     tmp/fastcgi;
    uwsgi_temp_path       tmp/uwsgi;
    scgi_temp_path        tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    nchan_max_reserved_memory 256M;
    server {
        listen 127.0.0.1:$PORT backlog=65535;
        server_name localhost;
        location ~ ^/sub/(?<chan>[A-Za-z0-9_.-]+)\$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$chan;
            nchan_subscriber_first_message newest;   # no replay of buffered history
            nchan_eventsource_ping_interval 0;       # no keepalive pings
        }
        location ~ ^/pub/(?<chan>[A-Za-z0-9_.-]+)\$ {
            allow 127.0.0.0/8;
            deny all;
            nchan_publisher http;
            nchan_channel_id \$chan;
            nchan_message_buffer_length 16;
            nchan_message_timeout 30s;
        }
        location = /health { return 200 "ok\n"; }
    }
}
CONF
    nginx -p "$DIR/" -e "$DIR/error.log" -c "$DIR/nchan.conf"
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
      sleep 0.1
    done
    echo "nchan up on 127.0.0.1:$PORT (master pid $(cat "$DIR/nchan.pid"))" ;;
  stop)
    [ -f "$DIR/nchan.pid" ] || { echo "not running"; exit 0; }
    kill -TERM "$(cat "$DIR/nchan.pid")" && rm -f "$DIR/nchan.pid" && echo stopped ;;
  *) echo "usage: scripts/nchan.sh start|stop [DIR] [PORT]" >&2; exit 2 ;;
esac

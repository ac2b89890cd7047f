# Puma settings for running the example app (app/config.ru) under cutover, checked
# with Debian 12's puma 5.6.5 (scripts/setup-servers). Pass it with an ABSOLUTE path:
#   puma --config /etc/cutover/puma.rb
# The rackup file is ./config.ru: cutover starts each instance in the resolved release.

# The socket: Puma reads LISTEN_FDS/LISTEN_PID itself (systemd socket activation),
# but by default only uses an activated socket whose address matches a `bind`.
# 'only' binds to exactly the activated sockets and nothing else: no `bind` here, no
# port to keep in step with cutover's [[listen]]. LISTEN_PID must be Puma's own pid:
# run puma itself, not `bundle exec` through a shell that forks it.
bind_to_activated_sockets "only"

# Not "development", where Puma wraps the app in Rack's development middleware
# (request log, exception pages, Rack::Lint).
environment "production"

# Cluster mode: a master and 2 forked workers, each with up to 4 threads.
workers 2
threads 1, 4

# Load the app in the master before forking. A release that fails to load then
# stops the master at once (with the app loaded in the workers instead, the master
# would keep forking workers that die, and never exit). It also rules out Puma's
# phased restart, which cutover's overlap replaces.
preload_app!

# SIGTERM is Puma's graceful stop: the master stops its workers, which stop accepting
# and finish the requests in flight. Give up on a worker after 20 s, under cutover's
# stop_timeout (25 s).
worker_shutdown_timeout 20

# No request queueing: each worker thread reads its connection itself instead of
# Puma's reactor buffering requests for it. Measured with Debian's puma 5.6.5 under
# wrk on 2 busy cores: with the reactor, 3 of 11 graceful stops (SIGTERM) left a
# request that had been sent unanswered until the client gave up (10 s) or the
# worker was killed after worker_shutdown_timeout (20 s), and the stop took that
# long (with reload strategy `restart`, nothing served meanwhile); without it,
# 0 of 11. The cost: no keep-alive (every answer says `Connection: close`) and a
# slow client holds a thread, which is what the reactor is for. Behind a proxy
# that buffers requests (nginx, most ingresses) neither matters; facing slow
# clients directly, drop this line and allow for the slow stops.
queue_requests false

# Puma's own restart commands (SIGUSR1 phased, SIGUSR2 hot restart) re-exec or
# re-fork in place on the same sockets; with cutover they are not needed, and no
# pidfile or state file is written.

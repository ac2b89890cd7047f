# A tiny Rack app for cutover's Puma example and tests/integration/program/servers.rs: Rack
# only (Debian's ruby-rack, which puma depends on), no Gemfile, no bundler.
#   /         200 "hello from <VERSION> pid <worker pid> ppid <master pid> dir <release dir>"
#   /healthz  200 "ok"
#   other     404
# The first words match examples/gunicorn/app/app.py, so the tests read the version
# the same way (the 3rd word). A local, not a constant: config.ru is evaluated inside
# a Rack::Builder block, where a constant would land on Object and warn on reload.
version = "v1"

# where this code was loaded from: releases/<id>, even via the `current` symlink
release_dir = File.dirname(File.realpath(__FILE__))

run(lambda do |env|
  case env["PATH_INFO"]
  when "/healthz"
    status, body = 200, "ok\n"
  when "/"
    status = 200
    body = "hello from #{version} pid #{Process.pid} ppid #{Process.ppid} dir #{release_dir}\n"
  else
    status, body = 404, "not found\n"
  end
  [status, {
    "Content-Type" => "text/plain; charset=utf-8",
    "Content-Length" => body.bytesize.to_s,
    "X-App-Version" => version,
  }, [body]]
end)

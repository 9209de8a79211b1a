# NixOS VM test (flake check `vm-relay-daemon-https`, run with pkgs.testers.runNixOSTest
# and a pkgs that has the overlay): a relay, a daemon that registers with it, and a client
# that reaches the daemon's /health over HTTPS through the relay. TLS ends on the daemon
# (a self-signed certificate until it has one from ACME, hence curl -k).
#
#   nix build .#checks.x86_64-linux.vm-relay-daemon-https
{
  name = "gate-relay-daemon-https";

  nodes = {
    relay = {
      imports = [ ../modules/relay.nix ];
      services.gate-relay.instances.default = {
        httpsPort = 443;
        p2pPort = 31145;
        domainSuffix = "gate.test";
        openFirewall = true;
      };
    };

    gateway = { pkgs, ... }: {
      imports = [ ../modules/daemon.nix ];
      services.gate-daemon = {
        enable = true;
        initialUpstreams = [{ name = "openai"; provider = "openai"; }];
        # The relay's address is pinned to its node id at runtime (see testScript): the
        # id exists only once the relay has created its key.
        relay.customDomain = "gateway";
      };
      environment.systemPackages = [ pkgs.curl ];
    };

    client = { pkgs, ... }: {
      environment.systemPackages = [ pkgs.curl ];
    };
  };

  testScript = ''
    start_all()

    relay.wait_for_unit("gate-relay-default.service")
    relay.wait_for_open_port(443)
    relay_id = relay.succeed(
        "runuser -u gate-relay -- gate-relay id --state-dir /var/lib/gate-relay-default"
    ).strip()

    gateway.wait_for_unit("gate-daemon.service")
    gateway.wait_for_open_port(3000)
    gateway.succeed("curl -fsS http://127.0.0.1:3000/health | grep -q '\"status\":\"ok\"'")
    # Runtime layer (/var/lib/gate/config.toml) over the Nix layer.
    gateway.succeed(
        f"runuser -u gate -- gate config set relay.addresses {relay_id}@relay:443 --state-dir /var/lib/gate",
        "runuser -u gate -- gate config set relay.enable true --state-dir /var/lib/gate",
        "test -f /var/lib/gate/config.toml",
    )
    gateway.systemctl("restart gate-daemon.service")
    gateway.wait_for_unit("gate-daemon.service")

    relay_ip = client.succeed("getent ahostsv4 relay | head -n1 | cut -d' ' -f1").strip()
    name = "gateway.gate.test"
    client.wait_until_succeeds(
        f"curl -fsSk --resolve {name}:443:{relay_ip} https://{name}/health | grep -q '\"status\":\"ok\"'",
        timeout=120,
    )
    # A name no daemon owns gets a TLS alert, not a hang.
    client.fail(f"curl -sSk --max-time 10 --resolve nobody.gate.test:443:{relay_ip} https://nobody.gate.test/health")
  '';
}

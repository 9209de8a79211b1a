# What the modules render for the examples in examples.nix: units (ExecStart, Environment,
# EnvironmentFile, StateDirectory, capabilities, restart), TOML, firewall, users, packages.
# Evaluates to a list of { name; ok; got; want; } (run with --eval --strict --json
# --read-write-mode so that the rendered TOML files exist in the store).
let
  inherit (builtins) attrNames elem filter head isString match readFile split;
  examples = import ./examples.nix;
  lib = import ./lib-stub.nix;
  pkgs = import ./pkgs-stub.nix { inherit lib; };

  ev = name: import ./eval.nix { modules = [ ../modules/default.nix examples.${name} ]; };
  flake = ev "seed-flake";
  daemon = ev "seed-daemon";
  relay = ev "seed-relay";
  instances = ev "seed-instances";
  named = ev "daemon-instances";
  full = ev "daemon-full";
  relayFull = ev "relay-full";
  relayToken = ev "relay-token";
  relayShared = ev "relay-shared-claims";
  overlay = ev "seed-overlay";

  exec = unit: unit.serviceConfig.ExecStart;
  configPath = unit: head (match ".* --config ([^ ]+) .*" (exec unit));
  tomlLines = unit: filter (l: isString l && l != "") (split "\n" (readFile (configPath unit)));
  hasLines = unit: lines: filter (l: !(elem l (tomlLines unit))) lines;
  caps = unit: {
    bounding = unit.serviceConfig.CapabilityBoundingSet;
    ambient = unit.serviceConfig.AmbientCapabilities;
    privateUsers = unit.serviceConfig.PrivateUsers or false;
  };
  noCaps = { bounding = ""; ambient = ""; privateUsers = true; };
  bindCap = { bounding = "CAP_NET_BIND_SERVICE"; ambient = "CAP_NET_BIND_SERVICE"; privateUsers = false; };
  unitBasics = unit: {
    inherit (unit.serviceConfig) User Group StateDirectory StateDirectoryMode Restart;
    environment = unit.environment;
    environmentFile = unit.serviceConfig.EnvironmentFile or null;
    wantedBy = unit.wantedBy;
  };
  store = pkg: "/nix/store/00000000000000000000000000000000-${pkg}-0.1.0";

  # The overlay and package.nix, called the way nixpkgs would call them.
  overlayPkgs =
    let
      pkgLib = lib // {
        cleanSource = src: src;
        cleanSourceWith = { src, filter }: assert !(filter "/src/target" "directory") && filter "/src/core" "directory"; src;
        licenses = { mit = "MIT"; asl20 = "Apache-2.0"; };
        platforms = { linux = [ "x86_64-linux" ]; darwin = [ "aarch64-darwin" ]; };
      };
      final = {
        callPackage = fn: args: import fn ({ lib = pkgLib; rustPlatform.buildRustPackage = attrs: attrs; } // args);
      };
    in
    import ../overlay.nix final { };

  tests = [
    # ---- the seed's first example
    {
      name = "seed-flake: one unit, gate-daemon.service";
      got = attrNames flake.services;
      want = [ "gate-daemon" ];
    }
    {
      name = "seed-flake: ExecStart passes the rendered file with --config and the state directory";
      got = match "(.*) --config /nix/store/[a-z0-9]{32}-gate-daemon.toml (.*)" (exec flake.services.gate-daemon);
      want = [ "${store "gate-daemon"}/bin/gate serve" "--state-dir /var/lib/gate --runtime tokio" ];
    }
    {
      name = "seed-flake: TOML has port 8080 and [upstreams.openai] provider = \"openai\"";
      got = hasLines flake.services.gate-daemon [ "port = 8080" "[upstreams.openai]" "provider = \"openai\"" "host = \"127.0.0.1\"" "p2p_port = 41147" ];
      want = [ ];
    }
    {
      name = "seed-flake: the upstream gets no key in the store";
      got = filter (l: match ".*(api_key|secret).*" l != null) (tomlLines flake.services.gate-daemon);
      want = [ ];
    }
    {
      name = "seed-flake: user gate, /var/lib/gate, restart on failure, no environment, no EnvironmentFile";
      got = unitBasics flake.services.gate-daemon;
      want = {
        User = "gate";
        Group = "gate";
        StateDirectory = "gate";
        StateDirectoryMode = "0700";
        Restart = "on-failure";
        environment = { };
        environmentFile = null;
        wantedBy = [ "multi-user.target" ];
      };
    }
    {
      name = "seed-flake: SIGKILL only 15 s after the default 30 s grace; LimitNOFILE 65536";
      got = { inherit (flake.services.gate-daemon.serviceConfig) TimeoutStopSec LimitNOFILE; };
      want = { TimeoutStopSec = 45; LimitNOFILE = 65536; };
    }
    {
      name = "server.shutdown_grace_secs = 5: TimeoutStopSec 20";
      got = (import ./eval.nix { modules = [ ../modules/default.nix examples.seed-flake { services.gate-daemon.settings.server.shutdown_grace_secs = 5; } ]; }).services.gate-daemon.serviceConfig.TimeoutStopSec;
      want = 20;
    }
    {
      name = "seed-relay: LimitNOFILE 65536, systemd's own stop timeout";
      got = {
        limit = relay.services.gate-relay-default.serviceConfig.LimitNOFILE;
        timeout = relay.services.gate-relay-default.serviceConfig ? TimeoutStopSec;
      };
      want = { limit = 65536; timeout = false; };
    }
    {
      name = "seed-flake: port 8080 needs no capability";
      got = caps flake.services.gate-daemon;
      want = noCaps;
    }
    {
      name = "seed-flake: firewall untouched without openFirewall";
      got = flake.firewall;
      want = { allowedTCPPorts = [ ]; allowedUDPPorts = [ ]; interfaces = { }; };
    }
    {
      name = "seed-flake: system user and group gate, package installed";
      got = { inherit (flake) users groups packages; };
      want = { users.gate = { isSystemUser = true; group = "gate"; }; groups = [ "gate" ]; packages = [ "gate-daemon" ]; };
    }
    {
      name = "seed-flake: default.nix adds the overlay";
      got = flake.overlays;
      want = 1;
    }

    # ---- the seed's gate-daemon example
    {
      name = "seed-daemon: secrets only through EnvironmentFile=/run/secrets/gate-daemon";
      got = { inherit (unitBasics daemon.services.gate-daemon) environment environmentFile; };
      want = { environment = { }; environmentFile = "/run/secrets/gate-daemon"; };
    }
    {
      name = "seed-daemon: firewall opens UDP p2pPort everywhere and on eth0, wg0; TCP 3000 stays closed (host is loopback)";
      got = daemon.firewall;
      want = {
        allowedTCPPorts = [ ];
        allowedUDPPorts = [ 41147 ];
        interfaces = {
          eth0 = { allowedTCPPorts = [ ]; allowedUDPPorts = [ 41147 ]; };
          wg0 = { allowedTCPPorts = [ ]; allowedUDPPorts = [ 41147 ]; };
        };
      };
    }
    {
      name = "seed-daemon: TOML has host, ports, relay and both upstreams";
      got = hasLines daemon.services.gate-daemon [
        "host = \"127.0.0.1\""
        "port = 3000"
        "p2p_port = 41147"
        "log_level = \"info\""
        "[relay]"
        "addresses = [\"relay.hellas.ai:443\"]"
        "custom_domain = \"myserver\""
        "enable = true"
        "[upstreams.openai]"
        "provider = \"openai\""
        "[upstreams.anthropic]"
        "provider = \"anthropic\""
      ];
      want = [ ];
    }

    # ---- the seed's gate-relay example
    {
      name = "seed-relay: one unit gate-relay-default.service";
      got = attrNames relay.services;
      want = [ "gate-relay-default" ];
    }
    {
      name = "seed-relay: ExecStart, state directory /var/lib/gate-relay-default, EnvironmentFile";
      got = {
        exec = match "(.*) --config /nix/store/[a-z0-9]{32}-gate-relay-default.toml (.*)" (exec relay.services.gate-relay-default);
        basics = unitBasics relay.services.gate-relay-default;
      };
      want = {
        exec = [ "${store "gate-relay"}/bin/gate-relay serve" "--state-dir /var/lib/gate-relay-default --runtime tokio" ];
        basics = {
          User = "gate-relay";
          Group = "gate-relay";
          StateDirectory = "gate-relay-default";
          StateDirectoryMode = "0700";
          Restart = "on-failure";
          environment = { };
          environmentFile = "/run/secrets/gate-relay";
          wantedBy = [ "multi-user.target" ];
        };
      };
    }
    {
      name = "seed-relay: port 443 keeps CAP_NET_BIND_SERVICE and nothing else";
      got = caps relay.services.gate-relay-default;
      want = bindCap;
    }
    {
      name = "seed-relay: firewall opens TCP 443, UDP 443 and 31145 on eth0 only";
      got = relay.firewall;
      want = {
        allowedTCPPorts = [ ];
        allowedUDPPorts = [ ];
        interfaces.eth0 = { allowedTCPPorts = [ 443 ]; allowedUDPPorts = [ 443 31145 ]; };
      };
    }
    {
      name = "seed-relay: TOML has the instance's keys";
      got = hasLines relay.services.gate-relay-default [
        "https_port = 443"
        "p2p_port = 31145"
        "bind_address = \"0.0.0.0\""
        "log_level = \"info\""
        "domain_suffix = \"gate.hellas.ai\""
        "[dns]"
        "enabled = true"
        "provider = \"cloudflare\""
        "[access]"
        "mode = \"open\""
        "allowed_nodes = []"
      ];
      want = [ ];
    }

    # ---- the seed's multiple instances
    {
      name = "seed-instances: one unit per instance, each with its own state directory and ports";
      got = lib.mapAttrs
        (_: u: {
          state = u.serviceConfig.StateDirectory;
          stateDir = head (match ".*--state-dir ([^ ]+) .*" (exec u));
          toml = hasLines u [ ];
          ports = filter (l: match "(https_port|p2p_port|bind_address) = .*" l != null) (tomlLines u);
        })
        instances.services;
      want = {
        gate-relay-internal = {
          state = "gate-relay-internal";
          stateDir = "/var/lib/gate-relay-internal";
          toml = [ ];
          ports = [ "bind_address = \"10.0.0.1\"" "https_port = 8443" "p2p_port = 31146" ];
        };
        gate-relay-public = {
          state = "gate-relay-public";
          stateDir = "/var/lib/gate-relay-public";
          toml = [ ];
          ports = [ "bind_address = \"0.0.0.0\"" "https_port = 443" "p2p_port = 31145" ];
        };
      };
    }
    {
      name = "seed-instances: capabilities only for the instance below 1024";
      got = lib.mapAttrs (_: caps) instances.services;
      want = { gate-relay-internal = noCaps; gate-relay-public = bindCap; };
    }
    {
      name = "seed-instances: different config files";
      got = configPath instances.services.gate-relay-public != configPath instances.services.gate-relay-internal;
      want = true;
    }

    # ---- the seed's overlay usage
    {
      name = "seed-overlay: the snippet installs both packages";
      got = { inherit (overlay) packages overlays; };
      want = { packages = [ "gate-daemon" "gate-relay" ]; overlays = 2; };
    }
    {
      name = "overlay: pkgs.gate-daemon and pkgs.gate-relay build the right crate with the right main program";
      got = lib.mapAttrs (_: p: { inherit (p) pname cargoBuildFlags; inherit (p.meta) mainProgram; lock = toString p.cargoLock.lockFile; }) overlayPkgs;
      want = {
        gate-daemon = { pname = "gate-daemon"; cargoBuildFlags = [ "-p" "gate-daemon" ]; mainProgram = "gate"; lock = toString ../../Cargo.lock; };
        gate-relay = { pname = "gate-relay"; cargoBuildFlags = [ "-p" "gate-relay" ]; mainProgram = "gate-relay"; lock = toString ../../Cargo.lock; };
      };
    }

    # ---- named daemon instances
    {
      name = "daemon-instances: default + team run, stopped does not; each its own state directory";
      got = lib.mapAttrs (_: u: { inherit (u.serviceConfig) StateDirectory WorkingDirectory; exec = match ".*(--state-dir .*)" (exec u); }) (lib.filterAttrs (n: _: lib.hasPrefix "gate-daemon" n) named.services);
      want = {
        gate-daemon = { StateDirectory = "gate"; WorkingDirectory = "/var/lib/gate"; exec = [ "--state-dir /var/lib/gate --runtime tokio" ]; };
        gate-daemon-team = { StateDirectory = "gate-team"; WorkingDirectory = "/var/lib/gate-team"; exec = [ "--state-dir /var/lib/gate-team --runtime smol" ]; };
      };
    }
    {
      name = "daemon-instances: firewall per instance and interfaces shared by daemon and relay merge";
      got = named.firewall;
      want = {
        allowedTCPPorts = [ 3001 ];
        allowedUDPPorts = [ 41148 ];
        interfaces.eth0 = { allowedTCPPorts = [ 8443 ]; allowedUDPPorts = [ 41147 8443 31146 ]; };
      };
    }
    {
      name = "daemon-instances: users for both services";
      got = { inherit (named) users groups; };
      want = {
        users = { gate = { isSystemUser = true; group = "gate"; }; gate-relay = { isSystemUser = true; group = "gate-relay"; }; };
        groups = [ "gate" "gate-relay" ];
      };
    }

    # ---- every key
    {
      name = "daemon-full: port 80 keeps CAP_NET_BIND_SERVICE; TCP 80 and UDP 41147 opened (host 0.0.0.0)";
      got = { caps = caps full.services.gate-daemon; inherit (full.firewall) allowedTCPPorts allowedUDPPorts; };
      want = { caps = bindCap; allowedTCPPorts = [ 80 ]; allowedUDPPorts = [ 41147 ]; };
    }
    {
      name = "daemon-full: settings merged with options (initialUpstreams + settings.upstreams)";
      got = hasLines full.services.gate-daemon [
        "[upstreams.openai]"
        "provider = \"openai\""
        "base_url = \"https://api.openai.com/v1\""
        "models = [\"gpt-4o\", \"gpt-4.1-mini\"]"
        "[upstreams.openai.aliases]"
        "\"gpt-4.1\" = \"gpt-4o\""
        "fast = \"gpt-4.1-mini\""
        "[upstreams.local]"
        "base_url = \"http://127.0.0.1:11434/v1\""
        "models = [\"llama3.2\", \"qwen2.5:7b\"]"
        "[upstreams.backup]"
        "enabled = false"
        "[auth]"
        "allow_loopback = false"
        "[auth.jwt]"
        "expiration_hours = 12"
        "[letsencrypt]"
        "auto_renew_days = 30"
        "[server]"
        "max_body_bytes = 33554432"
        "log_level = \"warn,gate=debug\""
      ];
      want = [ ];
    }
    {
      name = "relay-full: bind to :: on 8443, settings rendered";
      got = hasLines relayFull.services.gate-relay-full [
        "bind_address = \"::\""
        "claim_lapse_days = 30"
        "[dns.cloudflare]"
        "api_url = \"https://api.cloudflare.com/client/v4\""
        "[limits]"
        "max_connections_per_node = 4096"
        "max_daemon_connections = 10000"
        "metrics_port = 9464"
        "[tunnel]"
        "heartbeat_interval_ms = 15000"
        "[access]"
        "mode = \"allowlist\""
        "allowed_nodes = [\"jmeo6zaoqtegzmcwq4unojsl5d3vji7kkv5d22ekrihslsc32vla\"]"
      ];
      want = [ ];
    }
    {
      name = "relay-token: token mode and quotas rendered, no token in the store";
      got = hasLines relayToken.services.gate-relay-closed [
        "mode = \"token\""
        "max_claims = 1000"
        "acme_requests_per_hour = 10"
        "bytes_per_day = 10000000000"
      ];
      want = [ ];
    }
    {
      name = "relay-shared-claims: the store URL reaches the units only through their environment files";
      got = [
        (unitBasics relayShared.services.gate-relay-eu).environmentFile
        (unitBasics relayShared.services.gate-relay-us).environmentFile
        (hasLines relayShared.services.gate-relay-eu [ "[store]" ])
      ];
      want = [ "/run/secrets/gate-relay-store" "/run/secrets/gate-relay-store" [ "[store]" ] ];
    }
    {
      name = "relay-full: the metrics port stays closed in the firewall (loopback only)";
      got = relayFull.firewall.allowedTCPPorts;
      want = [ 8443 ];
    }
    {
      name = "seed-relay: no metrics_port unless metricsPort is set";
      got = hasLines relay.services.gate-relay-default [ "metrics_port" ];
      want = [ "metrics_port" ];
    }

    # ---- switches
    {
      name = "services.gate-relay.enable = false stops every instance";
      got = attrNames (import ./eval.nix { modules = [ ../modules/default.nix examples.seed-instances { services.gate-relay.enable = false; } ]; }).services;
      want = [ ];
    }
    {
      name = "an instance with enable = false has no unit";
      got = attrNames (import ./eval.nix { modules = [ ../modules/default.nix examples.seed-instances { services.gate-relay.instances.public.enable = lib.mkForce false; } ]; }).services;
      want = [ "gate-relay-internal" ];
    }
    {
      name = "nothing enabled: no unit, no user, no firewall port";
      got = import ./eval.nix { modules = [ ../modules/default.nix ]; };
      want = {
        services = { };
        firewall = { allowedTCPPorts = [ ]; allowedUDPPorts = [ ]; interfaces = { }; };
        users = { };
        groups = [ ];
        packages = [ ];
        overlays = 1;
        warnings = [ ];
      };
    }
    {
      name = "the TOML renderer quotes keys and escapes strings";
      got = pkgs.toTOML { a = { "b.c" = "x\"y\\z\n"; d = [ 1 2 ]; }; e = true; };
      want = "e = true\n\n[a]\n\"b.c\" = \"x\\\"y\\\\z\\n\"\nd = [1, 2]\n\n";
    }
  ];
in
# A test whose expression throws fails alone (the message is in nix's stderr).
map
  (t:
  let tried = builtins.tryEval (builtins.deepSeq t.got t.got); in
  t // {
    got = if tried.success then tried.value else "<evaluation error>";
    ok = tried.success && tried.value == t.want;
  })
  tests

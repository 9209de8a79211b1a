# services.gate-daemon: the Gate AI gateway (`gate serve`), as a default instance
# (gate-daemon.service, state in /var/lib/gate) and any number of named instances
# (gate-daemon-<name>.service, state in /var/lib/gate-<name>).
#
# The options are rendered to TOML, the "Nix" configuration layer, and passed with
# `--config`. The daemon's own runtime file `<state dir>/config.toml` (web UI, CLI) and the
# environment (`environmentFile`, for secrets) take priority over it:
# Environment > Runtime > Nix > Defaults.
{ config, lib, pkgs, ... }:
let
  inherit (lib)
    attrNames concatMap filter filterAttrs length listToAttrs literalExpression mapAttrsToList
    mkEnableOption mkIf mkOption nameValuePair optional optionalAttrs recursiveUpdate types
    unique;

  gateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gate-daemon;
  settingsFormat = pkgs.formats.toml { };

  providers = [ "openai" "anthropic" "google" "mistral" "groq" "openrouter" "custom" ];

  upstreamModule = {
    options = {
      name = mkOption {
        type = types.strMatching "[a-z0-9]([a-z0-9_-]*[a-z0-9])?";
        example = "openai";
        description = ''
          Name of the upstream: the key of `[upstreams.<name>]`, used in routes and in
          the environment variable that carries its key, `GATE_UPSTREAMS__<NAME>__API_KEY`.
        '';
      };
      provider = mkOption {
        type = types.enum providers;
        example = "anthropic";
        description = "The provider's API (`custom` is any OpenAI-compatible server; it needs `baseUrl`).";
      };
      baseUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://127.0.0.1:11434/v1";
        description = "Base URL as the provider's SDK documents it; null uses the provider's default.";
      };
      models = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "gpt-4o" "gpt-4o-mini" ];
        description = "Models this upstream serves; empty asks the upstream for its list.";
      };
    };
  };

  # Options shared by the default instance (services.gate-daemon) and named instances.
  commonOptions = {
    package = mkOption {
      type = types.package;
      default = pkgs.gate-daemon;
      defaultText = literalExpression "pkgs.gate-daemon";
      description = "The Gate package (provides `bin/gate`).";
    };
    runtime = mkOption {
      type = types.enum [ "tokio" "smol" ];
      default = "tokio";
      description = "The async runtime the daemon runs on (`gate serve --runtime`).";
    };
    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = "Address of the HTTP API and web UI (TCP). Key `host`.";
    };
    port = mkOption {
      type = types.port;
      default = 3000;
      description = "Port of the HTTP API and web UI (TCP). Key `port`.";
    };
    p2pPort = mkOption {
      type = types.port;
      default = 41147;
      description = "Port of the daemon's QUIC endpoint (UDP). Key `p2p_port`.";
    };
    logLevel = mkOption {
      type = types.str;
      default = "info";
      example = "warn,gate=debug";
      description = "Log level or tracing filter (`RUST_LOG` in the environment overrides it). Key `log_level`.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the daemon's ports on all interfaces: UDP `p2pPort`, and TCP `port` unless
        `host` is a loopback address.
      '';
    };
    openFirewallOnInterfaces = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "eth0" "wg0" ];
      description = "Open the same ports as `openFirewall`, but only on these interfaces.";
    };
    initialUpstreams = mkOption {
      type = types.listOf (types.submodule upstreamModule);
      default = [ ];
      example = literalExpression ''[ { name = "openai"; provider = "openai"; } ]'';
      description = ''
        Upstream providers rendered as `[upstreams.<name>]`. Their API keys are not set
        here: add them at runtime (`gate upstream add`, the web UI) or through
        `environmentFile` (`GATE_UPSTREAMS__<NAME>__API_KEY`). An upstream removed at
        runtime stays removed after a restart.
      '';
    };
    relay = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Connect to the relays in `relay.addresses` for a public HTTPS name. Key `relay.enable`.";
      };
      addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "relay.hellas.ai:443" ];
        description = ''
          Relays to register with: `host:port` (QUIC to that UDP port) or
          `<relay-node-id>@host:port` to pin the relay's key. Key `relay.addresses`.
        '';
      };
      customDomain = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "myserver";
        description = ''
          A DNS label to claim besides the node-id name: `myserver` becomes
          `myserver.<relay's domainSuffix>`. Key `relay.custom_domain`.
        '';
      };
    };
    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/gate-daemon";
      description = ''
        A file of `NAME=value` lines read by systemd (`EnvironmentFile=`), the only place
        for secrets: `GATE_AUTH__JWT__SECRET`, `GATE_UPSTREAMS__OPENAI__API_KEY`,
        `GATE_LETSENCRYPT__EMAIL`, `GATE_RELAY__TOKEN` (the registration token a relay in
        token mode asks for: the secret its operator gave you, alone or as `name:secret`), ...
        (`GATE_` then the key path with `__` between levels). Never copied to the Nix store.
      '';
    };
    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''
        {
          auth.jwt.issuer = "gate-daemon";
          letsencrypt = { enabled = true; domains = [ "myserver.gate.hellas.ai" ]; };
          upstreams.openai.models = [ "gpt-4o" ];
        }
      '';
      description = ''
        Any other configuration keys (snake_case, as in `gate config show`), merged over
        the TOML the options above produce. Keys that have an option of their own (`host`,
        `port`, `p2p_port`, `log_level`, `relay.*`) must be set through that option, and
        secrets through `environmentFile`: this file is world-readable in the Nix store.
      '';
    };
  };

  # Every enabled daemon: the default one and the named instances.
  daemons =
    optional cfg.enable { unit = "gate-daemon"; stateDir = "gate"; label = "services.gate-daemon"; inst = cfg; }
    ++ mapAttrsToList
      (name: inst: { unit = "gate-daemon-${name}"; stateDir = "gate-${name}"; label = "services.gate-daemon.instances.${name}"; inherit inst; })
      (filterAttrs (_: inst: inst.enable) cfg.instances);

  renderSettings = inst: recursiveUpdate
    ({
      inherit (inst) host port;
      p2p_port = inst.p2pPort;
      log_level = inst.logLevel;
      relay = {
        inherit (inst.relay) enable addresses;
      } // optionalAttrs (inst.relay.customDomain != null) { custom_domain = inst.relay.customDomain; };
    } // optionalAttrs (inst.initialUpstreams != [ ]) {
      upstreams = listToAttrs (map
        (u: nameValuePair u.name ({ inherit (u) provider; }
          // optionalAttrs (u.baseUrl != null) { base_url = u.baseUrl; }
          // optionalAttrs (u.models != [ ]) { inherit (u) models; }))
        inst.initialUpstreams);
    })
    inst.settings;

  configFile = d: settingsFormat.generate "${d.unit}.toml" (renderSettings d.inst);

  # The daemon listens on TCP `port` (API and UI) and UDP `p2pPort` (QUIC).
  firewallPorts = inst: {
    allowedTCPPorts = optional (!gateLib.isLoopback inst.host) inst.port;
    allowedUDPPorts = [ inst.p2pPort ];
  };

  service = d: gateLib.service {
    description = "Gate AI gateway (${d.label})";
    bin = "gate";
    inherit (d) inst stateDir;
    configFile = configFile d;
    user = "gate";
    needsLowPorts = d.inst.port < 1024 || d.inst.p2pPort < 1024;
    # On SIGTERM the daemon lets requests in flight go on for server.shutdown_grace_secs
    # (default 30), then ends streams and needs a few seconds more: SIGKILL only after that.
    timeoutStopSec = ((d.inst.settings.server or { }).shutdown_grace_secs or 30) + 15;
  };

  ownedKeys = inst:
    filter (k: inst.settings ? ${k}) [ "host" "port" "p2p_port" "log_level" "relay" ];
  secretKeys = inst:
    optional ((inst.settings.auth.jwt or { }) ? secret) "auth.jwt.secret"
    ++ optional ((inst.settings.relay or { }) ? token) "relay.token"
    # A store URL with a password must not reach the world-readable store; one without (a
    # local socket with peer authentication, a Redis without AUTH) may live in settings.
    ++ concatMap
      (k: optional
        (((inst.settings.store or { }) ? ${k})
        && builtins.match "[a-z]+://[^/@?]*:[^/@?]*@.*" inst.settings.store.${k} != null)
        "store.${k}")
      [ "url" "redis_url" ]
    ++ concatMap (n: optional ((inst.settings.upstreams.${n} or { }) ? api_key) "upstreams.${n}.api_key")
      (attrNames (inst.settings.upstreams or { }));

  assertionsFor = d:
    let upstreamNames = map (u: u.name) d.inst.initialUpstreams; in
    [
      {
        assertion = !d.inst.relay.enable || d.inst.relay.addresses != [ ];
        message = "${d.label}.relay.enable needs at least one address in ${d.label}.relay.addresses.";
      }
      {
        assertion = length (unique upstreamNames) == length upstreamNames;
        message = "${d.label}.initialUpstreams: each name may appear once.";
      }
      {
        assertion = ownedKeys d.inst == [ ];
        message = "${d.label}.settings sets ${toString (ownedKeys d.inst)}: use the module's own options for these.";
      }
      {
        assertion = secretKeys d.inst == [ ];
        message = "${d.label}.settings holds the secret ${toString (secretKeys d.inst)}: the Nix store is world-readable; put it in ${d.label}.environmentFile instead.";
      }
    ];

  allTcpPorts = concatMap (d: [ d.inst.port ]) daemons;
  allUdpPorts = concatMap (d: [ d.inst.p2pPort ]) daemons;
in
{
  options.services.gate-daemon = commonOptions // {
    enable = mkEnableOption "the Gate AI gateway (gate-daemon.service, state in /var/lib/gate)";
    instances = mkOption {
      type = types.attrsOf (types.submodule {
        options = commonOptions // {
          enable = mkOption {
            type = types.bool;
            default = true;
            description = "Whether to run this instance (gate-daemon-<name>.service, state in /var/lib/gate-<name>).";
          };
        };
      });
      default = { };
      example = literalExpression ''{ team = { port = 3001; p2pPort = 41148; }; }'';
      description = ''
        Further daemons, each with the same options as `services.gate-daemon`, its own
        unit `gate-daemon-<name>.service` and state directory `/var/lib/gate-<name>`.
      '';
    };
  };

  config = mkIf (daemons != [ ]) ({
    assertions = concatMap assertionsFor daemons ++ [
      {
        assertion = length (unique allTcpPorts) == length allTcpPorts && length (unique allUdpPorts) == length allUdpPorts;
        message = "services.gate-daemon: two daemons use the same port (TCP ${toString allTcpPorts}; UDP ${toString allUdpPorts}).";
      }
      {
        assertion = filter (n: !gateLib.isInstanceName n) (attrNames cfg.instances) == [ ];
        message = "services.gate-daemon.instances: names must be lower-case letters, digits and '-'.";
      }
    ];

    systemd.services = listToAttrs (map (d: nameValuePair d.unit (service d)) daemons);

    networking.firewall = gateLib.firewall firewallPorts (map (d: d.inst) daemons);
  } // gateLib.userAndPackages {
    name = "gate";
    description = "Gate AI gateway";
    instances = map (d: d.inst) daemons;
  });
}

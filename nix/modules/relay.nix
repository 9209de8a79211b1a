# services.gate-relay: the Gate SNI relay (`gate-relay serve`), one systemd unit per
# instance: services.gate-relay.instances.<name> runs gate-relay-<name>.service with its
# state (node key, name claims) in /var/lib/gate-relay-<name>.
#
# Each instance's options are rendered to TOML and passed with `--config`; secrets (the
# Cloudflare token) come from `environmentFile` as RELAY__... variables. An operator sees an
# instance's state with `gate-relay status --state-dir /var/lib/gate-relay-<name>` (as root or
# the gate-relay user).
{ config, lib, pkgs, ... }:
let
  inherit (lib)
    any attrValues concatMap filter filterAttrs length listToAttrs literalExpression
    mapAttrsToList mkIf mkOption nameValuePair optionalAttrs optionals recursiveUpdate types unique;

  gateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gate-relay;
  settingsFormat = pkgs.formats.toml { };

  instanceModule = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to run this instance (gate-relay-<name>.service).";
      };
      package = mkOption {
        type = types.package;
        default = pkgs.gate-relay;
        defaultText = literalExpression "pkgs.gate-relay";
        description = "The relay package (provides `bin/gate-relay`).";
      };
      runtime = mkOption {
        type = types.enum [ "tokio" "smol" ];
        default = "tokio";
        description = "The async runtime the relay runs on (`gate-relay serve --runtime`).";
      };
      httpsPort = mkOption {
        type = types.port;
        default = 443;
        description = ''
          Port for HTTPS clients (TCP) and for daemon tunnels (QUIC on the same UDP port).
          Key `https_port`. Below 1024 the unit keeps CAP_NET_BIND_SERVICE, nothing more.
        '';
      };
      p2pPort = mkOption {
        type = types.port;
        default = 31145;
        description = "Port of the relay's QUIC endpoint (UDP). Key `p2p_port`.";
      };
      bindAddress = mkOption {
        type = types.str;
        default = "0.0.0.0";
        example = "10.0.0.1";
        description = "IP address to listen on (`::` for all IPv6 and IPv4). Key `bind_address`.";
      };
      logLevel = mkOption {
        type = types.str;
        default = "info";
        example = "warn,gate_relay=debug";
        description = "Log level or tracing filter (`RUST_LOG` overrides it). Key `log_level`.";
      };
      metricsPort = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 9464;
        description = ''
          Serve Prometheus metrics on `127.0.0.1:<metricsPort>` (loopback only; never opened
          in the firewall). Off when null. Key `metrics_port`.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open TCP `httpsPort` and UDP `httpsPort` and `p2pPort` on all interfaces.";
      };
      openFirewallOnInterfaces = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "eth0" ];
        description = "Open the same ports as `openFirewall`, but only on these interfaces.";
      };
      domainSuffix = mkOption {
        type = types.str;
        default = "localhost";
        example = "gate.hellas.ai";
        description = ''
          Daemons get `<node-id>.<domainSuffix>` and `<customDomain>.<domainSuffix>`; point
          a wildcard DNS record `*.<domainSuffix>` at this relay. Key `domain_suffix`.
        '';
      };
      dns = {
        enabled = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Write the `_acme-challenge` TXT records daemons ask for (ACME DNS-01), for their
            own names only. Needs RELAY__DNS__CLOUDFLARE__API_TOKEN and
            RELAY__DNS__CLOUDFLARE__ZONE_ID in `environmentFile`. Key `dns.enabled`.
          '';
        };
        provider = mkOption {
          type = types.enum [ "cloudflare" ];
          default = "cloudflare";
          description = "The DNS provider. Key `dns.provider`.";
        };
      };
      access = {
        mode = mkOption {
          type = types.enum [ "open" "allowlist" "token" ];
          default = "open";
          description = ''
            Who may register: `open` (any daemon gets `<node-id>.<domainSuffix>` and, with
            `dns.enabled`, ACME records through your DNS token; the relay warns about it at
            start), `allowlist` (only `allowedNodes`) or `token` (only daemons with one of the
            registration tokens in `RELAY__ACCESS__TOKENS`, `name:secret` entries separated by
            commas, which must come from `environmentFile`; with `allowedNodes` set, a daemon
            also has to be listed). Quotas per token: `settings.access.quotas.<name>` and
            `settings.access.default_quota` (`custom_names`, `connections`, `bytes_per_day`,
            `acme_requests_per_hour`). Key `access.mode`.
          '';
        };
        allowedNodes = mkOption {
          type = types.listOf (types.strMatching "[a-z2-7]{52}");
          default = [ ];
          example = [ "jmeo6zaoqtegzmcwq4unojsl5d3vji7kkv5d22ekrihslsc32vla" ];
          description = ''
            The daemons admitted when `mode = "allowlist"` (and, when not empty, the only ones
            a token admits when `mode = "token"`): their node ids, as `gate id` prints them.
            Key `access.allowed_nodes`.
          '';
        };
      };
      environmentFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/gate-relay";
        description = ''
          A file of `NAME=value` lines read by systemd (`EnvironmentFile=`), the only place
          for secrets: `RELAY__DNS__CLOUDFLARE__API_TOKEN`, `RELAY__DNS__CLOUDFLARE__ZONE_ID`,
          `RELAY__ACCESS__TOKENS` (`RELAY__` then the key path with `__` between levels).
          Never copied to the store.
        '';
      };
      settings = mkOption {
        type = settingsFormat.type;
        default = { };
        example = literalExpression ''
          {
            claim_lapse_days = 30;
            limits = { max_connections = 16384; max_connections_per_ip = 256; };
          }
        '';
        description = ''
          Any other configuration keys (snake_case), merged over the TOML the options above
          produce. Keys that have an option of their own must be set through it, and the
          API token through `environmentFile`.
        '';
      };
    };
  };

  relays = mapAttrsToList
    (name: inst: { unit = "gate-relay-${name}"; label = "services.gate-relay.instances.${name}"; inherit name inst; })
    (filterAttrs (_: inst: inst.enable) cfg.instances);
  active = cfg.enable && relays != [ ];

  renderSettings = inst: recursiveUpdate
    ({
      https_port = inst.httpsPort;
      p2p_port = inst.p2pPort;
      bind_address = inst.bindAddress;
      log_level = inst.logLevel;
      domain_suffix = inst.domainSuffix;
      dns = { inherit (inst.dns) enabled provider; };
      access = { mode = inst.access.mode; allowed_nodes = inst.access.allowedNodes; };
    } // optionalAttrs (inst.metricsPort != null) { metrics_port = inst.metricsPort; }
    )
    inst.settings;

  configFile = r: settingsFormat.generate "${r.unit}.toml" (renderSettings r.inst);

  # TCP httpsPort for clients; UDP httpsPort and p2pPort for QUIC.
  firewallPorts = inst: {
    allowedTCPPorts = [ inst.httpsPort ];
    allowedUDPPorts = unique [ inst.httpsPort inst.p2pPort ];
  };

  service = r: gateLib.service {
    description = "Gate relay (${r.label})";
    bin = "gate-relay";
    inherit (r) inst;
    configFile = configFile r;
    stateDir = r.unit;
    user = "gate-relay";
    needsLowPorts = r.inst.httpsPort < 1024 || r.inst.p2pPort < 1024;
  };

  ownedKeys = inst:
    filter (k: inst.settings ? ${k}) [ "https_port" "p2p_port" "bind_address" "log_level" "domain_suffix" "metrics_port" ]
    ++ concatMap (k: optionals ((inst.settings.dns or { }) ? ${k}) [ "dns.${k}" ]) [ "enabled" "provider" ]
    ++ concatMap (k: optionals ((inst.settings.access or { }) ? ${k}) [ "access.${k}" ]) [ "mode" "allowed_nodes" ];

  assertionsFor = r: [
    {
      assertion = r.inst.httpsPort != r.inst.p2pPort;
      message = "${r.label}: httpsPort and p2pPort must differ (both are UDP ports).";
    }
    {
      assertion = ownedKeys r.inst == [ ];
      message = "${r.label}.settings sets ${toString (ownedKeys r.inst)}: use the instance's own options for these.";
    }
    {
      assertion = !((r.inst.settings.dns.cloudflare or { }) ? api_token);
      message = "${r.label}.settings holds dns.cloudflare.api_token: the Nix store is world-readable; put RELAY__DNS__CLOUDFLARE__API_TOKEN in ${r.label}.environmentFile instead.";
    }
    {
      # A store URL without a password (peer authentication over a Unix socket) may live in
      # settings; one with a password must not reach the world-readable store.
      assertion = !((r.inst.settings.store or { }) ? url)
        || builtins.match "[a-z]+://[^/@?]*:[^/@?]*@.*" r.inst.settings.store.url == null;
      message = "${r.label}.settings.store.url holds a password: the Nix store is world-readable; put RELAY__STORE__URL in ${r.label}.environmentFile instead.";
    }
    {
      assertion = !((r.inst.settings.access or { }) ? tokens);
      message = "${r.label}.settings holds access.tokens: the Nix store is world-readable; put RELAY__ACCESS__TOKENS in ${r.label}.environmentFile instead.";
    }
    {
      assertion = r.inst.access.mode != "token" || r.inst.environmentFile != null;
      message = "${r.label}.access.mode = \"token\" needs ${r.label}.environmentFile with RELAY__ACCESS__TOKENS (name:secret entries, comma-separated): tokens are secrets and never go in the Nix store.";
    }
    {
      assertion = r.inst.access.mode != "allowlist" || r.inst.access.allowedNodes != [ ];
      message = "${r.label}.access.mode = \"allowlist\" needs access.allowedNodes (each daemon's `gate id`): an empty allowlist admits nobody.";
    }
    {
      assertion = !r.inst.dns.enabled || r.inst.environmentFile != null;
      message = "${r.label}.dns.enabled needs ${r.label}.environmentFile with RELAY__DNS__CLOUDFLARE__API_TOKEN and RELAY__DNS__CLOUDFLARE__ZONE_ID.";
    }
    {
      assertion = gateLib.isInstanceName r.name;
      message = "services.gate-relay.instances: `${r.name}` is not a valid name (lower-case letters, digits and '-').";
    }
  ];

  # Two instances may share a port only on different bind addresses.
  sockets = concatMap
    (r: [ "tcp/${r.inst.bindAddress}/${toString r.inst.httpsPort}" ]
      ++ map (p: "udp/${r.inst.bindAddress}/${toString p}") (unique [ r.inst.httpsPort r.inst.p2pPort ])
      ++ optionals (r.inst.metricsPort != null) [ "tcp/127.0.0.1/${toString r.inst.metricsPort}" ])
    relays;
in
{
  options.services.gate-relay = {
    enable = mkOption {
      type = types.bool;
      default = any (inst: inst.enable) (attrValues cfg.instances);
      defaultText = literalExpression "true if any instance is enabled";
      description = ''
        Run the relay instances in `services.gate-relay.instances` (each with `enable`).
        Defining an instance is enough; set this to false to stop them all.
      '';
    };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = literalExpression ''
        {
          public = { httpsPort = 443; p2pPort = 31145; };
          internal = { httpsPort = 8443; p2pPort = 31146; bindAddress = "10.0.0.1"; };
        }
      '';
      description = "Relays to run: gate-relay-<name>.service, state in /var/lib/gate-relay-<name>.";
    };
  };

  config = mkIf active ({
    assertions = concatMap assertionsFor relays ++ [
      {
        assertion = length (unique sockets) == length sockets;
        message = "services.gate-relay.instances: two instances listen on the same address and port (${toString sockets}).";
      }
    ];

    systemd.services = listToAttrs (map (r: nameValuePair r.unit (service r)) relays);

    networking.firewall = gateLib.firewall firewallPorts (map (r: r.inst) relays);
  } // gateLib.userAndPackages {
    name = "gate-relay";
    description = "Gate relay";
    instances = map (r: r.inst) relays;
  });
}

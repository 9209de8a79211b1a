# The configurations the tests evaluate: first the seed document's examples exactly as it
# writes them (the user's own description of these modules), then fuller ones that set
# every configuration key the modules can render.
let
  # The seed's flake input `gate`, as far as its snippets use it.
  gate.overlays.default = import ../overlay.nix;
in
{
  # "In a NixOS Configuration"
  seed-flake = {
    services.gate-daemon = {
      enable = true;
      port = 8080;
      initialUpstreams = [{
        name = "openai";
        provider = "openai";
      }];
    };
  };

  # "#### `gate-daemon`"
  seed-daemon = {
    services.gate-daemon = {
      enable = true;

      # Network configuration
      host = "127.0.0.1";
      port = 3000;
      p2pPort = 41147;

      # Firewall options
      openFirewall = true; # Opens on all interfaces
      openFirewallOnInterfaces = [ "eth0" "wg0" ]; # Or specific interfaces

      # Initial upstream providers (API keys added at runtime)
      initialUpstreams = [
        { name = "openai"; provider = "openai"; }
        { name = "anthropic"; provider = "anthropic"; }
      ];

      # Relay client configuration
      relay = {
        enable = true;
        addresses = [ "relay.hellas.ai:443" ];
        customDomain = "myserver"; # Optional: myserver.gate.hellas.ai
      };

      # Environment file for secrets
      environmentFile = "/run/secrets/gate-daemon";
    };
  };

  # "#### `gate-relay`"
  seed-relay = {
    services.gate-relay = {
      enable = true;

      instances.default = {
        enable = true;
        httpsPort = 443;
        p2pPort = 31145;
        logLevel = "info";

        # Firewall configuration
        openFirewallOnInterfaces = [ "eth0" ];

        # DNS provider settings
        domainSuffix = "gate.hellas.ai";
        dns = {
          enabled = true;
          provider = "cloudflare";
        };

        # Secrets via environment file
        environmentFile = "/run/secrets/gate-relay";
      };
    };
  };

  # "### Overlay Usage"
  seed-overlay = { pkgs, ... }: {
    nixpkgs.overlays = [ gate.overlays.default ];

    environment.systemPackages = with pkgs; [
      gate-daemon
      gate-relay
    ];
  };

  # "### Multiple Instances"
  seed-instances = {
    services.gate-relay.instances = {
      public = {
        enable = true;
        httpsPort = 443;
        p2pPort = 31145;
      };
      internal = {
        enable = true;
        httpsPort = 8443;
        p2pPort = 31146;
        bindAddress = "10.0.0.1";
      };
    };
  };

  # Named daemon instances next to the default one, on a public address.
  daemon-instances = {
    services.gate-daemon = {
      enable = true;
      openFirewallOnInterfaces = [ "eth0" ];
      instances.team = {
        host = "0.0.0.0";
        port = 3001;
        p2pPort = 41148;
        openFirewall = true;
        runtime = "smol";
      };
      instances.stopped = {
        enable = false;
        port = 3002;
      };
    };
    services.gate-relay.instances.edge = {
      httpsPort = 8443;
      p2pPort = 31146;
      openFirewallOnInterfaces = [ "eth0" ];
    };
  };

  # Every daemon key the module renders, through options and `settings`.
  daemon-full = {
    services.gate-daemon = {
      enable = true;
      host = "0.0.0.0";
      port = 80;
      p2pPort = 41147;
      logLevel = "warn,gate=debug";
      openFirewall = true;
      initialUpstreams = [
        { name = "openai"; provider = "openai"; }
        { name = "local"; provider = "custom"; baseUrl = "http://127.0.0.1:11434/v1"; models = [ "llama3.2" "qwen2.5:7b" ]; }
      ];
      relay = {
        enable = true;
        addresses = [ "relay.hellas.ai:443" "[2001:db8::1]:443" ];
        customDomain = "myserver";
      };
      environmentFile = "/run/secrets/gate-daemon";
      settings = {
        upstreams.openai = {
          base_url = "https://api.openai.com/v1";
          models = [ "gpt-4o" "gpt-4.1-mini" ];
          aliases = { fast = "gpt-4.1-mini"; "gpt-4.1" = "gpt-4o"; };
          enabled = true;
        };
        upstreams.backup = { provider = "anthropic"; enabled = false; };
        auth = {
          allow_loopback = false;
          jwt = { issuer = "gate-daemon"; expiration_hours = 12; };
        };
        letsencrypt = {
          enabled = true;
          staging = true;
          domains = [ "myserver.gate.hellas.ai" ];
          auto_renew_days = 30;
          directory_url = "https://acme-staging-v02.api.letsencrypt.org/directory";
          ca_file = "/etc/ssl/certs/ca-certificates.crt";
        };
        server = { max_body_bytes = 33554432; connect_timeout_secs = 10; idle_timeout_secs = 300; };
      };
    };
  };

  # Every relay key the module renders.
  relay-full = {
    services.gate-relay.instances.full = {
      httpsPort = 8443;
      p2pPort = 31146;
      bindAddress = "::";
      logLevel = "debug";
      metricsPort = 9464;
      openFirewall = true;
      domainSuffix = "gate.example.com";
      dns = { enabled = true; provider = "cloudflare"; };
      access = {
        mode = "allowlist";
        allowedNodes = [ "jmeo6zaoqtegzmcwq4unojsl5d3vji7kkv5d22ekrihslsc32vla" ];
      };
      environmentFile = "/run/secrets/gate-relay";
      settings = {
        claim_lapse_days = 30;
        dns.cloudflare.api_url = "https://api.cloudflare.com/client/v4";
        limits = {
          handshake_timeout_ms = 5000;
          max_connections = 16384;
          max_connections_per_ip = 256;
          max_connections_per_node = 4096;
          max_daemon_connections = 10000;
        };
        tunnel = {
          heartbeat_interval_ms = 15000;
          registration_timeout_ms = 10000;
        };
      };
    };
  };

  # A relay closed with registration tokens, quotas per token and a cap on claims; the daemon
  # presents its token from its environment file.
  relay-token = {
    services.gate-relay.instances.closed = {
      domainSuffix = "gate.example.com";
      access.mode = "token";
      environmentFile = "/run/secrets/gate-relay-token";
      settings = {
        limits.max_claims = 1000;
        access.default_quota = { custom_names = 1; connections = 64; acme_requests_per_hour = 10; };
        access.quotas.team-a = { connections = 512; bytes_per_day = 10000000000; };
      };
    };
    services.gate-daemon = {
      enable = true;
      relay = { enable = true; addresses = [ "relay.example.com:31145" ]; customDomain = "myserver"; };
      environmentFile = "/run/secrets/gate-daemon-token";
    };
  };

  # One of two daemons (the other machine has the same) sharing keys, usage and budgets in
  # PostgreSQL and rate limits in Redis: the URLs with their passwords come from the
  # environment file; what holds no secret goes in settings.
  daemon-shared-store = {
    services.gate-daemon = {
      enable = true;
      host = "0.0.0.0";
      environmentFile = "/run/secrets/gate-daemon-store";
      settings.store.on_unavailable = "closed";
    };
  };

  # Two relay instances sharing name claims in one PostgreSQL database: the URL (with its
  # password) comes from each instance's environment file, never from settings.
  relay-shared-claims = {
    services.gate-relay.instances.eu = {
      domainSuffix = "gate.example.com";
      environmentFile = "/run/secrets/gate-relay-store";
    };
    services.gate-relay.instances.us = {
      domainSuffix = "gate.example.com";
      httpsPort = 8443;
      p2pPort = 31146;
      environmentFile = "/run/secrets/gate-relay-store";
    };
  };
}

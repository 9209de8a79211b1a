# Helpers shared by the gate-daemon and gate-relay modules: the systemd unit and hardening
# both use, the firewall and user blocks, and small predicates. Not a module; imported with
# `import ./lib.nix { inherit lib; }`.
{ lib }:
let
  inherit (lib) concatMap escapeShellArgs mkMerge optionalAttrs optionals unique;
in
rec {
  # Whether a listen address only accepts connections from this machine.
  isLoopback = host:
    host == "localhost" || host == "::1" || lib.hasPrefix "127." host;

  # Whether `name` may name an instance (and so a unit and a state directory).
  isInstanceName = name: builtins.match "[a-z0-9][a-z0-9-]*" name != null;

  # A Gate service: `bin serve --config configFile --state-dir /var/lib/stateDir --runtime
  # inst.runtime` from `inst.package`, as `user`, hardened, restarted on failure, with
  # `inst.environmentFile` (if any) as its EnvironmentFile. `timeoutStopSec` (when not null):
  # how long systemd waits after SIGTERM before SIGKILL (above the service's own grace).
  # LimitNOFILE: room for every connection the listeners admit (`server.max_connections`
  # per listener) plus upstream connections and files; systemd's default is 1024.
  service = { description, bin, inst, configFile, stateDir, user, needsLowPorts, timeoutStopSec ? null }: {
    inherit description;
    wantedBy = [ "multi-user.target" ];
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    serviceConfig = hardening { inherit needsLowPorts; } // {
      Type = "exec";
      ExecStart = escapeShellArgs [
        "${inst.package}/bin/${bin}"
        "serve"
        "--config"
        "${configFile}"
        "--state-dir"
        "/var/lib/${stateDir}"
        "--runtime"
        inst.runtime
      ];
      User = user;
      Group = user;
      StateDirectory = stateDir;
      StateDirectoryMode = "0700";
      WorkingDirectory = "/var/lib/${stateDir}";
      Restart = "on-failure";
      RestartSec = "5s";
      LimitNOFILE = 65536;
    } // optionalAttrs (timeoutStopSec != null) {
      TimeoutStopSec = timeoutStopSec;
    } // optionalAttrs (inst.environmentFile != null) {
      EnvironmentFile = toString inst.environmentFile;
    };
  };

  # `networking.firewall` for instances with `openFirewall` and `openFirewallOnInterfaces`;
  # `ports inst` gives `{ allowedTCPPorts; allowedUDPPorts; }`.
  firewall = ports: instances: {
    allowedTCPPorts = concatMap (inst: optionals inst.openFirewall (ports inst).allowedTCPPorts) instances;
    allowedUDPPorts = concatMap (inst: optionals inst.openFirewall (ports inst).allowedUDPPorts) instances;
    interfaces = mkMerge (concatMap
      (inst: map (iface: { ${iface} = ports inst; }) inst.openFirewallOnInterfaces)
      instances);
  };

  # The system user and group `name` a service runs as, and the instances' packages.
  userAndPackages = { name, description, instances }: {
    users.users.${name} = {
      isSystemUser = true;
      group = name;
      inherit description;
    };
    users.groups.${name} = { };
    environment.systemPackages = unique (map (inst: inst.package) instances);
  };

  # The [Service] settings shared by every Gate unit. `needsLowPorts`: the service binds a
  # port below 1024, so it keeps CAP_NET_BIND_SERVICE (ambient, and nothing else).
  # `systemd-analyze security --offline=yes` scores these units at 2.0 or better.
  hardening = { needsLowPorts }:
    {
      CapabilityBoundingSet = if needsLowPorts then "CAP_NET_BIND_SERVICE" else "";
      AmbientCapabilities = if needsLowPorts then "CAP_NET_BIND_SERVICE" else "";
      NoNewPrivileges = true;
      UMask = "0077";
      PrivateTmp = true;
      PrivateDevices = true;
      DevicePolicy = "closed";
      ProtectSystem = "strict";
      ProtectHome = true;
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      ProtectClock = true;
      ProtectHostname = true;
      ProtectProc = "invisible";
      ProcSubset = "pid";
      PrivateMounts = true;
      # AF_UNIX for nscd (name lookups on NixOS) and the daemon's admin socket
      # (<state dir>/admin.sock), AF_NETLINK for getaddrinfo's interface checks
      RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      MemoryDenyWriteExecute = true;
      RemoveIPC = true;
      KeyringMode = "private";
      SystemCallArchitectures = "native";
      SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
      SystemCallErrorNumber = "EPERM";
    }
    # A user namespace would make CAP_NET_BIND_SERVICE useless on the host's network.
    // optionalAttrs (!needsLowPorts) { PrivateUsers = true; };
}

# Helpers shared by the gate-daemon and gate-relay modules: the systemd hardening both
# units use and small predicates. Not a module; imported with `import ./lib.nix { inherit lib; }`.
{ lib }:
let
  inherit (lib) optionalAttrs;
in
{
  # Whether a listen address only accepts connections from this machine.
  isLoopback = host:
    host == "localhost" || host == "::1" || lib.hasPrefix "127." host;

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
      # AF_UNIX for nscd (name lookups on NixOS), AF_NETLINK for getaddrinfo's interface checks
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

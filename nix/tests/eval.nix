# Evaluates NixOS modules with the stand-ins (lib-stub.nix, pkgs-stub.nix,
# nixos-stub.nix) and returns what the tests look at: the systemd services and their unit
# files as NixOS would write them, the firewall, users and packages. Failed assertions
# are an evaluation error, as in NixOS.
#   import ./eval.nix { modules = [ ../modules/default.nix { services.gate-daemon.enable = true; } ]; }
{ modules }:
let
  lib = import ./lib-stub.nix;
  pkgs = import ./pkgs-stub.nix { inherit lib; };
  inherit (lib) concatMapStringsSep concatStringsSep filter mapAttrs mapAttrsToList;

  evaluated = lib.evalModules {
    modules = [ ./nixos-stub.nix ] ++ modules;
    specialArgs = { inherit pkgs; };
  };
  inherit (evaluated) config;
  failed = filter (a: !a.assertion) config.assertions;

  unitValue = v:
    if builtins.isBool v then (if v then "true" else "false")
    else toString v;
  # One `Key=value` line per value; lists give one line per element (as NixOS does).
  section = attrs: concatStringsSep "" (mapAttrsToList
    (k: v: concatMapStringsSep "" (x: "${k}=${unitValue x}\n") (if builtins.isList v then v else [ v ]))
    attrs);
  unitFile = name: s: ''
    [Unit]
    Description=${s.description}
    ${section ({ After = s.after; Wants = s.wants; Requires = s.requires; Before = s.before; } // s.unitConfig)}
    [Service]
    ${concatStringsSep "" (mapAttrsToList (k: v: "Environment=\"${k}=${v}\"\n") s.environment)}${section s.serviceConfig}
    [Install]
    ${section { WantedBy = s.wantedBy; RequiredBy = s.requiredBy; }}
  '' + builtins.seq name "";
in
if failed != [ ] then
  throw "Failed assertions:\n${concatMapStringsSep "\n" (a: "- ${a.message}") failed}"
else {
  services = mapAttrs
    (name: s: {
      inherit (s) description wantedBy after wants environment;
      serviceConfig = s.serviceConfig;
      unitFile = unitFile name s;
    })
    config.systemd.services;
  firewall = {
    inherit (config.networking.firewall) allowedTCPPorts allowedUDPPorts;
    interfaces = config.networking.firewall.interfaces;
  };
  users = mapAttrs (_: u: { inherit (u) isSystemUser group; }) config.users.users;
  groups = builtins.attrNames config.users.groups;
  packages = map (p: p.pname) config.environment.systemPackages;
  overlays = builtins.length config.nixpkgs.overlays;
  inherit (config) warnings;
}

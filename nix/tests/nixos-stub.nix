# Declares, for the tests, the NixOS options Gate's modules define (a small subset of
# nixpkgs' nixos/modules with the same names and types), so that a definition of anything
# else is an evaluation error, as it would be on a real NixOS system.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  listOfStr = mkOption { type = types.listOf types.str; default = [ ]; };
  unitSection = mkOption { type = types.attrsOf types.anything; default = { }; };
  portList = mkOption { type = types.listOf types.port; default = [ ]; };
  overlay = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = builtins.isFunction;
    merge = _: defs: (builtins.head defs).value;
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };

    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          enable = mkOption { type = types.bool; default = true; };
          description = mkOption { type = types.str; default = ""; };
          wantedBy = listOfStr;
          requiredBy = listOfStr;
          wants = listOfStr;
          requires = listOfStr;
          after = listOfStr;
          before = listOfStr;
          environment = mkOption { type = types.attrsOf types.str; default = { }; };
          path = mkOption { type = types.listOf types.package; default = [ ]; };
          restartTriggers = mkOption { type = types.listOf types.anything; default = [ ]; };
          unitConfig = unitSection;
          serviceConfig = unitSection;
        };
      });
    };

    networking.firewall = {
      enable = mkOption { type = types.bool; default = true; };
      allowedTCPPorts = portList;
      allowedUDPPorts = portList;
      interfaces = mkOption {
        default = { };
        type = types.attrsOf (types.submodule {
          options = {
            allowedTCPPorts = portList;
            allowedUDPPorts = portList;
          };
        });
      };
    };

    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          isSystemUser = mkOption { type = types.bool; default = false; };
          group = mkOption { type = types.str; default = ""; };
          description = mkOption { type = types.str; default = ""; };
          home = mkOption { type = types.str; default = "/var/empty"; };
        };
      });
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options.gid = mkOption { type = types.nullOr types.int; default = null; };
      });
    };

    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    nixpkgs.overlays = mkOption { type = types.listOf overlay; default = [ ]; };
  };
}

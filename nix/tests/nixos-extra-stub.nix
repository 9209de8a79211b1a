# The NixOS options that nix/test-config.nix and the flake's test-vm set besides Gate's
# own (machine basics), declared loosely for the tests.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  loose = mkOption { type = types.anything; default = null; };
in
{
  options = {
    boot.loader.grub.enable = loose;
    fileSystems = mkOption { type = types.attrsOf types.anything; default = { }; };
    services.getty.autologinUser = loose;
    virtualisation.vmVariant = mkOption { type = types.attrsOf types.anything; default = { }; };
    system.stateVersion = loose;
    nixpkgs.hostPlatform = loose;
  };
}

# Both Gate modules, services.gate-daemon and services.gate-relay, with the overlay that
# provides their default packages (pkgs.gate-daemon, pkgs.gate-relay).
{
  imports = [ ./daemon.nix ./relay.nix ];
  nixpkgs.overlays = [ (import ../overlay.nix) ];
}

# Adds pkgs.gate-daemon and pkgs.gate-relay.
final: _prev: {
  gate-daemon = final.callPackage ./package.nix { pname = "gate-daemon"; };
  gate-relay = final.callPackage ./package.nix { pname = "gate-relay"; };
}

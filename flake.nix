{
  description = "Gate: a self-hosted AI gateway (gate) and SNI relay (gate-relay)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs { inherit system; overlays = [ self.overlays.default ]; }));
    in
    {
      overlays.default = import ./nix/overlay.nix;

      packages = forAllSystems (pkgs: {
        inherit (pkgs) gate-daemon gate-relay;
        default = pkgs.gate-daemon;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.gate-daemon ];
          packages = with pkgs; [ cargo-nextest cargo-fuzz cargo-deny ];
        };
      });
    };
}

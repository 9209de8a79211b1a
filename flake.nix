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
      # pkgs.gate-daemon (bin/gate) and pkgs.gate-relay (bin/gate-relay).
      overlays.default = import ./nix/overlay.nix;

      packages = forAllSystems (pkgs: {
        inherit (pkgs) gate-daemon gate-relay;
        default = pkgs.gate-daemon;
      });

      # Each module brings the overlay, so that its `package` option has a default.
      nixosModules = {
        default = ./nix/modules/default.nix;
        gate-daemon = {
          imports = [ ./nix/modules/daemon.nix ];
          nixpkgs.overlays = [ self.overlays.default ];
        };
        gate-relay = {
          imports = [ ./nix/modules/relay.nix ];
          nixpkgs.overlays = [ self.overlays.default ];
        };
      };

      # `nixos-rebuild build-vm --flake .#test-vm`: a relay and a daemon in one VM.
      nixosConfigurations.test-vm = nixpkgs.lib.nixosSystem {
        modules = [
          ./nix/test-config.nix
          { nixpkgs.hostPlatform = "x86_64-linux"; }
        ];
      };

      # `nix flake check`: the packages build, and a NixOS VM test runs a relay, a daemon
      # registered with it, and an HTTPS client that reaches the daemon through the relay.
      checks = forAllSystems (pkgs: {
        inherit (pkgs) gate-daemon gate-relay;
        vm-relay-daemon-https = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix);
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.gate-daemon ];
          packages = with pkgs; [
            clippy
            rustfmt
            rust-analyzer
            cargo-nextest
            cargo-fuzz
            cargo-deny
            deadnix
            nixpkgs-fmt
            curl
            openssl
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}

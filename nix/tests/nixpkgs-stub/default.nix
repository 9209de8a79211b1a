# `import nixpkgs { system; overlays; }` for flake-tests.nix: the stand-in pkgs with the
# overlays applied as nixpkgs applies them, a callPackage that calls package.nix with a
# buildRustPackage returning its arguments, and testers / mkShell that return theirs.
{ system, overlays ? [ ] }:
let
  lib = import ../lib-stub.nix;
  stub = import ../pkgs-stub.nix { inherit lib; };
  pkgLib = lib // {
    cleanSource = src: src;
    cleanSourceWith = { src, ... }: src;
    licenses = { mit = "MIT"; asl20 = "Apache-2.0"; };
    platforms = { linux = [ "x86_64-linux" "aarch64-linux" ]; darwin = [ "aarch64-darwin" ]; };
  };
  derivation = name: attrs: attrs // { type = "derivation"; inherit name system; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  base = stub // {
    inherit system;
    callPackage = fn: args: import fn ({
      lib = pkgLib;
      rustPlatform.buildRustPackage = attrs: derivation attrs.pname attrs;
    } // args);
    testers.runNixOSTest = test: derivation "vm-test-${test.name}" { inherit test; };
    mkShell = attrs: derivation "shell" attrs;
    nixpkgs-fmt = derivation "nixpkgs-fmt" { };
  } // builtins.listToAttrs (map (n: { name = n; value = derivation n { }; })
    [ "clippy" "rustfmt" "rust-analyzer" "cargo-nextest" "cargo-fuzz" "cargo-deny" "deadnix" "openssl" ]);
  pkgs = builtins.foldl' (acc: overlay: acc // overlay pkgs acc) base overlays;
in
pkgs

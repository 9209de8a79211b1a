# Builds both Gate binaries from this workspace. The NixOS modules (nix/modules/) and
# their tests arrive with the NixOS issue; this file is what the overlay and flake use.
{ lib, rustPlatform, pname ? "gate-daemon", cargoPackage ? pname }:

rustPlatform.buildRustPackage {
  inherit pname;
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" cargoPackage ];
  doCheck = false;
  meta = {
    description = "Gate: a self-hosted AI gateway and SNI relay";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = if pname == "gate-relay" then "gate-relay" else "gate";
  };
}

# Builds one of Gate's two binaries from this workspace: `pname = "gate-daemon"` gives
# bin/gate, `pname = "gate-relay"` gives bin/gate-relay. Used by nix/overlay.nix and flake.nix.
{ lib, rustPlatform, pname ? "gate-daemon", cargoPackage ? pname }:

rustPlatform.buildRustPackage {
  inherit pname;
  version = "0.1.0";
  # The workspace without build output (target/, fuzz/target/) and without the Nix
  # files, so that editing a module does not rebuild the binaries.
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = path: type:
      let name = baseNameOf path; in
      !(type == "directory" && (name == "target" || name == "nix" || name == "artifacts"))
      && name != "flake.nix" && name != "flake.lock";
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" cargoPackage ];
  # The test suite starts both binaries on loopback and drives them with real clients;
  # it runs in CI (./test.sh), not inside the sandboxed build.
  doCheck = false;
  meta = {
    description =
      if pname == "gate-relay" then "gate-relay: gives Gate daemons a public HTTPS address by forwarding TLS by SNI over QUIC"
      else "Gate: a self-hosted AI gateway for OpenAI, Anthropic and OpenAI-compatible providers";
    homepage = "https://github.com/hellas-ai/gate";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = if pname == "gate-relay" then "gate-relay" else "gate";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}

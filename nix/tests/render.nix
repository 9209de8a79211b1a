# The rendered units of every example in examples.nix, for run.sh:
# { <example> = { <unit> = { unitFile = "..."; config = "/nix/store/...toml"; environmentFile = ...; }; }; }
# Evaluate with --read-write-mode so that the TOML files are written to the store.
let
  examples = import ./examples.nix;
  render = example: builtins.mapAttrs
    (_: s: {
      inherit (s) unitFile;
      config = builtins.head (builtins.match ".* --config ([^ ]+) .*" s.serviceConfig.ExecStart);
      environmentFile = s.serviceConfig.EnvironmentFile or null;
    })
    (import ./eval.nix { modules = [ ../modules/default.nix example ]; }).services;
in
builtins.mapAttrs (_: render) examples

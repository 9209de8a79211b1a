# A stand-in for the few parts of nixpkgs' `pkgs` the modules use, for the tests:
# `formats.toml` (its type, and `generate`, which renders TOML in pure Nix and writes it
# to the store with builtins.toFile like nixpkgs writes a file), and placeholder packages
# for gate-daemon and gate-relay (their store paths only appear in ExecStart).
{ lib }:
let
  inherit (builtins) attrNames concatStringsSep filter isAttrs isBool isFloat isInt isList isString match replaceStrings toString;

  fakePackage = pname: mainProgram: {
    type = "derivation";
    name = "${pname}-0.1.0";
    inherit pname;
    version = "0.1.0";
    outPath = "/nix/store/00000000000000000000000000000000-${pname}-0.1.0";
    meta = { inherit mainProgram; };
  };

  tomlString = s:
    let escaped = replaceStrings [ "\\" "\"" "\n" "\t" "\r" ] [ "\\\\" "\\\"" "\\n" "\\t" "\\r" ] s; in
    if match ".*[[:cntrl:]].*" escaped != null then throw "TOML: control character in a string"
    else "\"" + escaped + "\"";
  tomlKey = k: if match "[A-Za-z0-9_-]+" k != null then k else tomlString k;
  tomlValue = path: v:
    if isString v then tomlString v
    else if isBool v then (if v then "true" else "false")
    else if isInt v || isFloat v then toString v
    else if isList v then "[" + concatStringsSep ", " (map (tomlValue path) v) + "]"
    else if v == null then throw "TOML has no null (key ${path})"
    else throw "TOML: cannot render the value at ${path}";
  isTable = v: isAttrs v && !(v ? outPath);
  renderTable = prefix: table:
    let
      names = attrNames table;
      leaves = filter (n: !(isTable table.${n})) names;
      tables = filter (n: isTable table.${n}) names;
      header = if prefix == [ ] then "" else "[${concatStringsSep "." (map tomlKey prefix)}]\n";
      body = concatStringsSep "" (map (n: "${tomlKey n} = ${tomlValue (concatStringsSep "." (prefix ++ [ n ])) table.${n}}\n") leaves);
      # a table with only sub-tables needs no header of its own, except an empty one
      own = if leaves != [ ] || tables == [ ] then header + body + "\n" else "";
    in
    own + concatStringsSep "" (map (n: renderTable (prefix ++ [ n ]) table.${n}) tables);
  toTOML = table: renderTable [ ] table;
in
{
  gate-daemon = fakePackage "gate-daemon" "gate";
  gate-relay = fakePackage "gate-relay" "gate-relay";
  curl = fakePackage "curl" "curl";
  writeText = name: text: builtins.toFile name text;
  formats.toml = _: {
    type = lib.types.attrsOf lib.types.anything // { description = "TOML value"; };
    generate = name: value: builtins.toFile name (toTOML value);
  };
  inherit toTOML;
}

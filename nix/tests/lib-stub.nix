# A small stand-in for the parts of nixpkgs' `lib` that Gate's NixOS modules use, for the
# tests only (nixpkgs cannot be fetched where they run). It follows nixpkgs' semantics
# where the modules depend on them:
#   - option declarations (mkOption, mkEnableOption, literalExpression) and types: bool,
#     str, int, ints.between, port (0..65535), enum, strMatching, path, package, nullOr,
#     listOf, attrsOf, submodule (attrset or function of { name, ... }), either, anything;
#   - properties: mkIf, mkMerge, mkOverride, mkDefault, mkForce, pushed down to the
#     options they define, with priorities;
#   - evalModules: imports, a lazy fixpoint over `config`, type checks on every definition,
#     and an error for a definition of an option that does not exist;
#   - the list / attrset / string helpers the modules call.
# It is deliberately strict where nixpkgs is strict (unknown options, wrong types,
# conflicting scalar definitions) so that a module that passes here is likely to pass there.
let
  inherit (builtins)
    all any attrNames concatLists concatStringsSep elem filter foldl' genList head isAttrs
    isBool isFunction isInt isList isString length listToAttrs mapAttrs match toJSON;

  # ---------------------------------------------------------------- lists, attrs, strings
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: as: if cond then as else { };
  concatMap = f: xs: concatLists (map f xs);
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  filterAttrs = pred: set:
    listToAttrs (concatMap (n: optional (pred n set.${n}) (nameValuePair n set.${n})) (attrNames set));
  attrValues = set: map (n: set.${n}) (attrNames set);
  genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  last = xs: builtins.elemAt xs (length xs - 1);
  imap1 = f: xs: genList (i: f (i + 1) (builtins.elemAt xs i)) (length xs);
  concatMapStringsSep = sep: f: xs: concatStringsSep sep (map f xs);
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  recursiveUpdate = lhs: rhs:
    lhs // mapAttrs
      (n: v: if isAttrs v && isAttrs (lhs.${n} or null) && !(isDerivation v) then recursiveUpdate lhs.${n} v else v)
      rhs;
  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
  escapeShellArg = arg:
    if match "[[:alnum:],._+:@%/-]+" arg != null then arg
    else "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] arg}'";
  escapeShellArgs = concatMapStringsSep " " escapeShellArg;
  getExe' = pkg: bin: "${pkg}/bin/${bin}";
  getExe = pkg: getExe' pkg (pkg.meta.mainProgram or pkg.pname);
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  # ---------------------------------------------------------------- showing values in errors
  showLoc = concatStringsSep ".";
  showValue = v:
    if isDerivation v then "<derivation ${v.name or "?"}>"
    else if isFunction v then "<function>"
    else toJSON (stripFunctions v);
  stripFunctions = v:
    if isFunction v then "<function>"
    else if isDerivation v then "<derivation>"
    else if isAttrs v then mapAttrs (_: stripFunctions) v
    else if isList v then map stripFunctions v
    else v;

  # ---------------------------------------------------------------- properties
  propertyType = v: if isAttrs v then v._type or "" else "";
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOptionDefault = mkOverride 1500;

  # mkMerge / mkIf / mkOverride around an attrset become properties of each attribute.
  pushDownProperties = cfg:
    let t = propertyType cfg; in
    if t == "merge" then concatMap pushDownProperties cfg.contents
    else if t == "if" then map (mapAttrs (_: mkIf cfg.condition)) (pushDownProperties cfg.content)
    else if t == "override" then map (mapAttrs (_: mkOverride cfg.priority)) (pushDownProperties cfg.content)
    else [ cfg ];

  dischargeProperties = def:
    let t = propertyType def; in
    if t == "merge" then concatMap dischargeProperties def.contents
    else if t == "if" then
      (if !isBool def.condition then throw "mkIf called with a non-Boolean condition"
      else if def.condition then dischargeProperties def.content else [ ])
    else [ def ];

  # ---------------------------------------------------------------- options
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${name}.";
  };
  isOption = v: isAttrs v && (v._type or "") == "option";

  # Discharge properties, keep the definitions of the highest priority, check the type,
  # merge. Returns { defined = bool; value = ...; }.
  mergeDefinitions = loc: type: defs:
    let
      discharged = concatMap
        (d: map (value: { inherit (d) file; inherit value; }) (dischargeProperties d.value))
        defs;
      priority = d: if propertyType d.value == "override" then d.value.priority else 100;
      best = foldl' (acc: d: if priority d < acc then priority d else acc) 100000 discharged;
      kept = map
        (d: if propertyType d.value == "override" then d // { value = d.value.content; } else d)
        (filter (d: priority d == best) discharged);
      # an override may itself wrap mkIf / mkMerge
      final = concatMap
        (d: map (value: { inherit (d) file; inherit value; }) (dischargeProperties d.value))
        kept;
      checked = map
        (d:
          if type.check d.value then d
          else throw "A definition for option `${showLoc loc}' is not of type `${type.description}'. Definition value in ${d.file}: ${showValue d.value}")
        final;
    in
    {
      defined = final != [ ];
      value = type.merge loc checked;
    };

  evalOption = loc: opt: defs:
    let
      type = opt.type or types.anything;
      withDefault = defs ++ optional (opt ? default) { file = "the option's default"; value = mkOptionDefault opt.default; };
      merged = mergeDefinitions loc type withDefault;
      value =
        if merged.defined then merged.value
        else throw "The option `${showLoc loc}' is used but not defined.";
    in
    if opt ? apply then opt.apply value else value;

  # Evaluate a tree of option declarations against a list of definitions
  # ({ file; value; }, each value an attrset for this level).
  evalTree = loc: decls: defs:
    let
      pushed = concatMap
        (d: map (value: { inherit (d) file; inherit value; }) (pushDownProperties d.value))
        defs;
      notAttrs = filter (d: !isAttrs d.value) pushed;
      unknown = concatMap
        (d: map (n: { name = n; inherit (d) file; }) (filter (n: !(decls ? ${n})) (attrNames d.value)))
        pushed;
      sub = name: concatMap
        (d: optional (d.value ? ${name}) { inherit (d) file; value = d.value.${name}; })
        pushed;
      result = mapAttrs
        (name: decl:
          if isOption decl then evalOption (loc ++ [ name ]) decl (sub name)
          else evalTree (loc ++ [ name ]) decl (sub name))
        decls;
      firstUnknown = head unknown;
    in
    if notAttrs != [ ] then
      throw "The option `${showLoc loc}' is a set of options; ${(head notAttrs).file} defines it as ${showValue (head notAttrs).value}"
    else if unknown != [ ] then
      throw "The option `${showLoc (loc ++ [ firstUnknown.name ])}' does not exist. Definition in ${firstUnknown.file}."
    else result;

  # Merge the `options` of several modules (nested attrsets of option declarations).
  mergeDecls = a: b:
    a // mapAttrs
      (n: v:
        if !(a ? ${n}) then v
        else if isOption v || isOption a.${n} then throw "The option `${n}' is declared twice."
        else mergeDecls a.${n} v)
      b;

  # Flatten `imports`, apply module functions, split into options and config.
  collectModules = args: modules:
    concatMap
      (m:
        let
          file = if builtins.isPath m || isString m then toString m else "<inline module>";
          raw = if builtins.isPath m || isString m then import m else m;
          value = if isFunction raw then raw args else raw;
          # As nixpkgs' unifyModuleSyntax: with `options` or `config` nothing else but
          # `imports` may appear; without them, everything but `imports` is config.
          isFull = value ? options || value ? config;
          extra = attrNames (builtins.removeAttrs value [ "imports" "options" "config" ]);
          this = {
            inherit file;
            options = value.options or { };
            config = if isFull then value.config or { } else builtins.removeAttrs value [ "imports" ];
          };
        in
        if isFull && extra != [ ] then
          throw "Module `${file}' has an unsupported attribute `${head extra}'. Move it into `config'."
        else [ this ] ++ collectModules args (value.imports or [ ]))
      modules;

  evalModules = { modules, specialArgs ? { } }:
    let
      args = { inherit lib config options; } // specialArgs;
      collected = collectModules args modules;
      options = foldl' mergeDecls { } (map (m: m.options) collected);
      config = evalTree [ ] options (map (m: { inherit (m) file; value = m.config; }) collected);
    in
    { inherit config options; };

  # ---------------------------------------------------------------- types
  mkOptionType = { name, description ? name, check ? (_: true), merge ? mergeEqualOption }:
    { _type = "option-type"; inherit name description check merge; };

  mergeEqualOption = loc: defs:
    let first = head defs; in
    foldl'
      (acc: d:
        if d.value == acc then acc
        else throw "The option `${showLoc loc}' has conflicting definition values: ${showValue acc} (${first.file}) and ${showValue d.value} (${d.file}).")
      first.value
      defs;

  mergeAnything = loc: defs:
    let values = map (d: d.value) defs; in
    if all isList values then concatLists values
    else if all (v: isAttrs v && !(isDerivation v)) values then (types.attrsOf types.anything).merge loc defs
    else mergeEqualOption loc defs;

  between = lo: hi: mkOptionType {
    name = "intBetween";
    description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
    check = v: isInt v && v >= lo && v <= hi;
  };

  types = rec {
    anything = mkOptionType { name = "anything"; description = "anything"; merge = mergeAnything; };
    bool = mkOptionType { name = "bool"; description = "boolean"; check = isBool; };
    str = mkOptionType { name = "str"; description = "string"; check = isString; };
    int = mkOptionType { name = "int"; description = "signed integer"; check = isInt; };
    ints = {
      inherit between;
      positive = between 1 9223372036854775807;
      u16 = between 0 65535;
    };
    port = ints.u16 // { name = "port"; description = "16 bit unsigned integer; between 0 and 65535 (both inclusive)"; };
    path = mkOptionType {
      name = "path";
      description = "path";
      check = v: (isString v || builtins.isPath v) && builtins.substring 0 1 (toString v) == "/";
    };
    package = mkOptionType { name = "package"; description = "package"; check = isDerivation; };
    enum = values: mkOptionType {
      name = "enum";
      description = "one of ${concatMapStringsSep ", " toJSON values}";
      check = v: elem v values;
    };
    strMatching = pattern: mkOptionType {
      name = "strMatching";
      description = "string matching the pattern ${pattern}";
      check = v: isString v && match pattern v != null;
    };
    nullOr = t: mkOptionType {
      name = "nullOr";
      description = "null or ${t.description}";
      check = v: v == null || t.check v;
      merge = loc: defs:
        let nulls = length (filter (d: d.value == null) defs); in
        if nulls == length defs then null
        else if nulls != 0 then throw "The option `${showLoc loc}' is defined both null and not null."
        else t.merge loc defs;
    };
    either = a: b: mkOptionType {
      name = "either";
      description = "${a.description} or ${b.description}";
      check = v: a.check v || b.check v;
      merge = loc: defs:
        if all (d: a.check d.value) defs then a.merge loc defs
        else if all (d: b.check d.value) defs then b.merge loc defs
        else throw "The option `${showLoc loc}' has definitions of different types.";
    };
    listOf = t: mkOptionType {
      name = "listOf";
      description = "list of ${t.description}";
      check = isList;
      merge = loc: defs: concatLists (imap1
        (n: d: imap1
          (m: value:
            let eloc = loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]; in
            if t.check value then t.merge eloc [{ inherit (d) file; inherit value; }]
            else throw "A definition for option `${showLoc eloc}' is not of type `${t.description}'. Definition value in ${d.file}: ${showValue value}")
          d.value)
        defs);
    };
    attrsOf = t: mkOptionType {
      name = "attrsOf";
      description = "attribute set of ${t.description}";
      check = isAttrs;
      merge = loc: defs:
        let
          pushed = concatMap
            (d: map (value: { inherit (d) file; inherit value; }) (pushDownProperties d.value))
            defs;
          names = unique (concatMap (d: attrNames d.value) pushed);
          merged = map
            (name: {
              inherit name;
              result = mergeDefinitions (loc ++ [ name ]) t
                (concatMap (d: optional (d.value ? ${name}) { inherit (d) file; value = d.value.${name}; }) pushed);
            })
            names;
        in
        listToAttrs (map (m: nameValuePair m.name m.result.value) (filter (m: m.result.defined) merged));
    };
    # A submodule: an attrset { options = ...; } or a function of { name, config, lib, ... }
    # returning one. Definitions may be attrsets or functions of the same arguments.
    submodule = module: mkOptionType {
      name = "submodule";
      description = "submodule";
      check = v: isAttrs v || isFunction v;
      merge = loc: defs:
        let
          args = { name = last loc; inherit lib config; };
          declared = if isFunction module then module args else module;
          config = evalTree loc (declared.options or { })
            (map (d: d // { value = if isFunction d.value then d.value args else d.value; }) defs);
        in
        config;
    };
  };

  lib = {
    inherit optional optionals optionalString optionalAttrs concatMap nameValuePair mapAttrs'
      mapAttrsToList filterAttrs attrValues genAttrs unique last imap1 concatMapStringsSep
      hasPrefix recursiveUpdate isDerivation escapeShellArg escapeShellArgs getExe getExe'
      literalExpression mkIf mkMerge mkOverride mkDefault mkForce mkOptionDefault mkOption
      mkEnableOption evalModules mkOptionType types;
    inherit (builtins)
      all any attrNames concatLists concatStringsSep elem filter foldl' head length listToAttrs
      mapAttrs toJSON;
  };
in
lib

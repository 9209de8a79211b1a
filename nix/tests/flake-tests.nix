# flake.nix's outputs, evaluated with a stand-in nixpkgs input (nixpkgs-stub/ and the
# lib stand-in): every output the design names exists, the modules it exports evaluate
# with the seed's examples, test-vm evaluates, and the VM test's machines render the units
# the test script relies on. Same result format as module-tests.nix.
let
  inherit (builtins) attrNames head match readFile;
  lib = import ./lib-stub.nix;
  examples = import ./examples.nix;

  nixpkgs = {
    outPath = ./nixpkgs-stub;
    lib = lib // {
      nixosSystem = { modules }: import ./eval.nix { modules = [ ./nixos-extra-stub.nix ] ++ modules; };
    };
  };
  flake = import ../../flake.nix;
  self = flake.outputs { inherit self nixpkgs; };

  sys = "x86_64-linux";
  ev = modules: import ./eval.nix { inherit modules; };
  configText = unit: readFile (head (match ".* --config ([^ ]+) .*" unit.serviceConfig.ExecStart));
  vmTest = self.checks.${sys}.vm-relay-daemon-https.test;
  vmNode = name: ev [ vmTest.nodes.${name} ];
  testVm = self.nixosConfigurations.test-vm;

  tests = [
    {
      name = "flake: outputs";
      got = attrNames self;
      want = [ "checks" "devShells" "formatter" "nixosConfigurations" "nixosModules" "overlays" "packages" ];
    }
    {
      name = "flake: packages.<system>.{gate-daemon,gate-relay,default} for both Linux systems";
      got = lib.mapAttrs (_: p: lib.mapAttrs (_: d: d.pname) p) self.packages;
      want = lib.genAttrs [ "aarch64-linux" "x86_64-linux" ] (_: { default = "gate-daemon"; gate-daemon = "gate-daemon"; gate-relay = "gate-relay"; });
    }
    {
      name = "flake: nixosModules.{default,gate-daemon,gate-relay}, overlays.default";
      got = { modules = attrNames self.nixosModules; overlays = attrNames self.overlays; };
      want = { modules = [ "default" "gate-daemon" "gate-relay" ]; overlays = [ "default" ]; };
    }
    {
      name = "flake: nixosModules.default with the seed's flake example";
      got = let r = ev [ self.nixosModules.default examples.seed-flake ]; in { units = attrNames r.services; inherit (r) overlays; };
      want = { units = [ "gate-daemon" ]; overlays = 1; };
    }
    {
      name = "flake: nixosModules.gate-daemon and gate-relay each bring the overlay";
      got = {
        daemon = let r = ev [ self.nixosModules.gate-daemon examples.seed-daemon ]; in { units = attrNames r.services; inherit (r) overlays; };
        relay = let r = ev [ self.nixosModules.gate-relay examples.seed-relay ]; in { units = attrNames r.services; inherit (r) overlays; };
      };
      want = {
        daemon = { units = [ "gate-daemon" ]; overlays = 1; };
        relay = { units = [ "gate-relay-default" ]; overlays = 1; };
      };
    }
    {
      name = "flake: nixosConfigurations.test-vm runs a daemon and a relay, ports open";
      got = { units = attrNames testVm.services; inherit (testVm.firewall) allowedTCPPorts allowedUDPPorts; };
      want = { units = [ "gate-daemon" "gate-relay-default" ]; allowedTCPPorts = [ 3000 8443 ]; allowedUDPPorts = [ 41147 8443 31145 ]; };
    }
    {
      name = "flake: checks (packages and the VM test) for both systems";
      got = lib.mapAttrs (_: attrNames) self.checks;
      want = lib.genAttrs [ "aarch64-linux" "x86_64-linux" ] (_: [ "gate-daemon" "gate-relay" "vm-relay-daemon-https" ]);
    }
    {
      name = "vm test: machines relay, gateway, client";
      got = attrNames vmTest.nodes;
      want = [ "client" "gateway" "relay" ];
    }
    {
      name = "vm test: the relay machine runs gate-relay-default on 443 with its ports open";
      got = let r = vmNode "relay"; in {
        units = attrNames r.services;
        inherit (r.firewall) allowedTCPPorts allowedUDPPorts;
        toml = map (l: match ".*\n${l}\n.*" (configText r.services.gate-relay-default) != null) [ "https_port = 443" "domain_suffix = \"gate.test\"" ];
      };
      want = { units = [ "gate-relay-default" ]; allowedTCPPorts = [ 443 ]; allowedUDPPorts = [ 443 31145 ]; toml = [ true true ]; };
    }
    {
      name = "vm test: the gateway machine runs gate-daemon claiming gateway.<suffix>";
      got = let r = vmNode "gateway"; in {
        units = attrNames r.services;
        customDomain = match ".*custom_domain = \"gateway\".*" (configText r.services.gate-daemon) != null;
        inherit (r) packages;
      };
      want = { units = [ "gate-daemon" ]; customDomain = true; packages = [ "curl" "gate-daemon" ]; };
    }
    {
      name = "vm test: the script uses the units, state directories and name the modules give";
      got = map (s: match ".*${s}.*" vmTest.testScript != null) [ "gate-relay-default.service" "/var/lib/gate-relay-default" "gate-daemon.service" "/var/lib/gate" "gateway.gate.test" ];
      want = [ true true true true true ];
    }
    {
      name = "flake: devShells.default and formatter";
      got = { shell = self.devShells.${sys}.default.name; formatter = self.formatter.${sys}.name; };
      want = { shell = "shell"; formatter = "nixpkgs-fmt"; };
    }
  ];
in
map
  (t:
  let tried = builtins.tryEval (builtins.deepSeq t.got t.got); in
  t // {
    got = if tried.success then tried.value else "<evaluation error>";
    ok = tried.success && tried.value == t.want;
  })
  tests

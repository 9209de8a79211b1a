# Configurations that must NOT evaluate, each with a piece of the error it must give:
# typos in option names, values of the wrong type, ports out of range, and the modules'
# own assertions. run.sh evaluates each (`import ./eval.nix`) and expects failure.
let
  lib = import ./lib-stub.nix;
  examples = import ./examples.nix;
in
{
  daemon-option-typo = {
    error = "The option `services.gate-daemon.prot' does not exist";
    modules = [{ services.gate-daemon = { enable = true; prot = 8080; }; }];
  };
  daemon-nested-typo = {
    error = "The option `services.gate-daemon.relay.adresses' does not exist";
    modules = [{ services.gate-daemon = { enable = true; relay.adresses = [ "relay.hellas.ai:443" ]; }; }];
  };
  daemon-upstream-typo = {
    error = "does not exist";
    modules = [{ services.gate-daemon = { enable = true; initialUpstreams = [{ name = "openai"; provder = "openai"; }]; }; }];
  };
  relay-instance-typo = {
    error = "The option `services.gate-relay.instances.default.httpPort' does not exist";
    modules = [{ services.gate-relay.instances.default.httpPort = 443; }];
  };
  relay-dns-typo = {
    error = "The option `services.gate-relay.instances.default.dns.enable' does not exist";
    modules = [{ services.gate-relay.instances.default.dns.enable = true; }];
  };
  daemon-port-out-of-range = {
    error = "A definition for option `services.gate-daemon.port' is not of type `16 bit unsigned integer";
    modules = [{ services.gate-daemon = { enable = true; port = 70000; }; }];
  };
  daemon-p2p-port-negative = {
    error = "A definition for option `services.gate-daemon.p2pPort' is not of type";
    modules = [{ services.gate-daemon = { enable = true; p2pPort = -1; }; }];
  };
  relay-port-out-of-range = {
    error = "A definition for option `services.gate-relay.instances.public.httpsPort' is not of type";
    modules = [ examples.seed-instances { services.gate-relay.instances.public.httpsPort = lib.mkForce 65536; } ];
  };
  instance-port-as-string = {
    error = "A definition for option `services.gate-daemon.instances.team.port' is not of type";
    modules = [{ services.gate-daemon.instances.team.port = "3001"; }];
  };
  unknown-provider = {
    error = "is not of type `one of \"openai\", \"anthropic\"";
    modules = [{ services.gate-daemon = { enable = true; initialUpstreams = [{ name = "openai"; provider = "openia"; }]; }; }];
  };
  bad-upstream-name = {
    error = "is not of type `string matching the pattern";
    modules = [{ services.gate-daemon = { enable = true; initialUpstreams = [{ name = "Open AI"; provider = "openai"; }]; }; }];
  };
  unknown-dns-provider = {
    error = "A definition for option `services.gate-relay.instances.default.dns.provider' is not of type `one of \"cloudflare\"'";
    modules = [{ services.gate-relay.instances.default.dns.provider = "route53"; }];
  };
  unknown-runtime = {
    error = "services.gate-daemon.runtime' is not of type";
    modules = [{ services.gate-daemon = { enable = true; runtime = "async-std"; }; }];
  };
  secret-in-settings = {
    error = "services.gate-daemon.settings holds the secret auth.jwt.secret";
    modules = [{ services.gate-daemon = { enable = true; settings.auth.jwt.secret = "0123456789abcdef0123"; }; }];
  };
  api-key-in-settings = {
    error = "holds the secret upstreams.openai.api_key";
    modules = [{ services.gate-daemon = { enable = true; settings.upstreams.openai.api_key = "sk-123"; }; }];
  };
  cloudflare-token-in-settings = {
    error = "holds dns.cloudflare.api_token";
    modules = [{ services.gate-relay.instances.default.settings.dns.cloudflare.api_token = "abc"; }];
  };
  option-owned-key-in-settings = {
    error = "settings sets port: use the module's own options";
    modules = [{ services.gate-daemon = { enable = true; settings.port = 9000; }; }];
  };
  relay-without-addresses = {
    error = "relay.enable needs at least one address";
    modules = [{ services.gate-daemon = { enable = true; relay.enable = true; }; }];
  };
  duplicate-upstream = {
    error = "initialUpstreams: each name may appear once";
    modules = [{ services.gate-daemon = { enable = true; initialUpstreams = [{ name = "a"; provider = "openai"; } { name = "a"; provider = "groq"; }]; }; }];
  };
  relay-allowlist-without-nodes = {
    error = "services.gate-relay.instances.default.access.mode = \"allowlist\" needs access.allowedNodes";
    modules = [{ services.gate-relay.instances.default.access.mode = "allowlist"; }];
  };
  relay-allowlist-bad-node-id = {
    error = "allowedNodes";
    modules = [{ services.gate-relay.instances.default.access = { mode = "allowlist"; allowedNodes = [ "not-a-node-id" ]; }; }];
  };
  relay-access-in-settings = {
    error = "use the instance's own options for these";
    modules = [{ services.gate-relay.instances.default.settings.access.mode = "allowlist"; }];
  };
  relay-dns-without-secrets = {
    error = "dns.enabled needs services.gate-relay.instances.default.environmentFile";
    modules = [{ services.gate-relay.instances.default.dns.enabled = true; }];
  };
  relay-instances-same-port = {
    error = "two instances listen on the same address and port";
    modules = [{ services.gate-relay.instances = { a.httpsPort = 8443; b = { httpsPort = 8443; p2pPort = 31146; }; }; }];
  };
  relay-instances-same-metrics-port = {
    error = "two instances listen on the same address and port";
    modules = [ examples.seed-instances { services.gate-relay.instances = { public.metricsPort = 9464; internal.metricsPort = 9464; }; } ];
  };
  relay-metrics-port-in-settings = {
    error = "use the instance's own options for these";
    modules = [{ services.gate-relay.instances.a.settings.metrics_port = 9464; }];
  };
  relay-https-equals-p2p = {
    error = "httpsPort and p2pPort must differ";
    modules = [{ services.gate-relay.instances.a = { httpsPort = 8443; p2pPort = 8443; }; }];
  };
  daemons-same-port = {
    error = "two daemons use the same port";
    modules = [{ services.gate-daemon = { enable = true; instances.b = { p2pPort = 41148; }; }; }];
  };
  environment-file-relative = {
    error = "services.gate-daemon.environmentFile' is not of type `null or path'";
    modules = [{ services.gate-daemon = { enable = true; environmentFile = "secrets/gate"; }; }];
  };
  relay-token-without-environment-file = {
    error = "access.mode = \"token\" needs services.gate-relay.instances.default.environmentFile with RELAY__ACCESS__TOKENS";
    modules = [{ services.gate-relay.instances.default.access.mode = "token"; }];
  };
  relay-tokens-in-settings = {
    error = "settings holds access.tokens: the Nix store is world-readable";
    modules = [{ services.gate-relay.instances.default.settings.access.tokens = [ "a:0123456789abcdef" ]; }];
  };
  relay-store-password-in-settings = {
    error = "settings.store.url holds a password: the Nix store is world-readable";
    modules = [{ services.gate-relay.instances.default.settings.store.url = "postgres://relay:hunter2@db.internal/gate"; }];
  };
  daemon-store-password-in-settings = {
    error = "holds the secret store.url: the Nix store is world-readable";
    modules = [{ services.gate-daemon = { enable = true; settings.store.url = "postgres://gate:hunter2@db.internal/gate"; }; }];
  };
  daemon-redis-password-in-settings = {
    error = "holds the secret store.redis_url: the Nix store is world-readable";
    modules = [{ services.gate-daemon = { enable = true; settings.store.redis_url = "redis://:hunter2@cache.internal:6379/0"; }; }];
  };
  daemon-relay-token-in-settings = {
    error = "holds the secret relay.token";
    modules = [{ services.gate-daemon = { enable = true; settings.relay.token = "0123456789abcdef"; }; }];
  };
}

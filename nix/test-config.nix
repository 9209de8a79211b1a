# A small NixOS machine running a relay and a daemon, for trying the modules:
#
#   nix build -f '<nixpkgs/nixos>' system --arg configuration ./nix/test-config.nix
#   nixos-rebuild build-vm --flake .#test-vm && ./result/bin/run-*-vm
#
# In the VM (auto-login as root): `systemctl status gate-daemon gate-relay-default`,
# `curl http://127.0.0.1:3000/health`; from the host, the daemon is on localhost:3000.
# To route the daemon through the relay, pin the relay's key at runtime:
#   id=$(runuser -u gate-relay -- gate-relay id --state-dir /var/lib/gate-relay-default)
#   runuser -u gate -- gate config set relay.addresses "$id@127.0.0.1:8443" --state-dir /var/lib/gate
#   runuser -u gate -- gate config set relay.enable true --state-dir /var/lib/gate
#   systemctl restart gate-daemon
#   curl -k --resolve test-vm.localhost:8443:127.0.0.1 https://test-vm.localhost:8443/health
{ ... }:
{
  imports = [ ./modules ];

  services.gate-daemon = {
    enable = true;
    # 0.0.0.0 so that QEMU's port forward (host localhost:3000) reaches it.
    host = "0.0.0.0";
    port = 3000;
    openFirewall = true;
    initialUpstreams = [
      { name = "openai"; provider = "openai"; }
      { name = "anthropic"; provider = "anthropic"; }
    ];
    relay.customDomain = "test-vm";
    # Secrets (GATE_UPSTREAMS__OPENAI__API_KEY=...) would go in a file outside the store:
    # environmentFile = "/run/secrets/gate-daemon";
  };

  services.gate-relay.instances.default = {
    httpsPort = 8443;
    p2pPort = 31145;
    domainSuffix = "localhost";
    openFirewall = true;
  };

  # Enough of a machine to build; the VM variant replaces disks and boot loader.
  boot.loader.grub.enable = false;
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  services.getty.autologinUser = "root";
  virtualisation.vmVariant.virtualisation.forwardPorts = [
    { from = "host"; host.port = 3000; guest.port = 3000; }
    { from = "host"; host.port = 8443; guest.port = 8443; }
  ];
  system.stateVersion = "25.05";
}

@p0 @security @requires.qemu
Feature: The guest is untrusted
  A coding agent works as root inside its VM, and the VM is there precisely
  because that agent may be careless, tricked or hostile. Whatever it does in
  there, it must not read or change the user's other files, open the user's
  machine to the network, spy on other VMs, find what an earlier tenant of a
  pooled VM left, or reach the host's own control channels. Each scenario
  carries out the attack from inside the guest, as root, and judges the
  outcome on the host. (What a hostile guest may cost the host is the next
  feature: hostile_guest.feature.)

  Background:
    Given a project whose config declares the VMs:
      | name      | cpus | memory | disk |
      | sandbox   | 1    | 512M   | 2G   |
      | neighbour | 1    | 512M   | 2G   |

  Scenario Outline: Asking for <what>, a guest still sees its mounted folder and nothing else
    Given the project folder "app" holds "README.md" saying "the project"
    And secrets lie on the host beside "app" and elsewhere, and "app" holds links to them
    And the config mounts "app" at "/work/app" in "sandbox"
    And the VM "sandbox" is running
    And the guest of "sandbox" has rigged its file-system client to ask the host for <what>
    When the operator mounts "app"
    And from inside "sandbox" an attacker reads and writes outside "/work/app" by "..", absolute paths, symlinks and hard links
    Then the attacker read the project but no secret
    And nothing outside "app" on the host was changed or added

    Examples:
      | what               |
      | the mounted folder |
      | its parent folder  |
      | the host's root    |

  Scenario: Forwarded ports listen on the host's loopback only, whatever the guest does
    Given the VM "sandbox" is running
    And the guest of "sandbox" lets its SSH server open forwarded ports to anyone and listens on every address
    And the config forwards host port 18480 to port 8000 of "sandbox"
    And the config forwards port 9000 of "sandbox" to host port 19400
    And the config offers a SOCKS5 proxy into "sandbox" on host port 11480
    And the config forwards host address 127.0.0.2 port 18481 to port 8000 of "sandbox"
    When the operator starts port forwarding
    Then everything the host listens on for "sandbox" is on 127.0.0.1, but port 18481 on 127.0.0.2 as the config names it

  @requires.daemon
  Scenario: A VM from the warm pool carries nothing from its previous tenant
    Given the scenario leased the VM "sandbox"
    And the tenant of "sandbox" left files, a running process and a shell history behind
    When the lease ends and the scenario leases the VM "sandbox" again
    Then the VM "sandbox" is a different VM process than before
    And the guest of "sandbox" holds nothing the previous tenant left

  @requires.daemon
  Scenario: Two VMs from the warm pool draw different random numbers
    Given the VMs "sandbox" and "neighbour" are running
    Then the VM "sandbox" was restored from a memory snapshot, not booted
    And the VM "neighbour" was restored from a memory snapshot, not booted
    And the guests of "sandbox" and "neighbour" draw different random numbers

  Scenario: The guest finds no way to the daemon or to another VM's console and agent
    Given the VMs "sandbox" and "neighbour" are running
    And the project folder "app" holds "README.md" saying "the project"
    And the config mounts "app" at "/work/app" in "sandbox"
    And the guest of "sandbox" has rigged its file-system client to ask the host for the host's root
    When the operator mounts "app"
    And from inside "sandbox" an attacker hunts for the host's control sockets and tries to remove them
    Then the attacker found none of the daemon's sockets nor those of "neighbour"
    And those sockets are still in place on the host, in folders only the host user can enter

  @requires.network-profiles @requires.root
  Scenario Outline: Services on the host's loopback are out of the guest's reach on the <network> network
    Given a service listens on the host's loopback only
    And a VM "sandbox" on the <network> network is running
    When the guest of "sandbox" tries every address the host could have for it
    Then the loopback service never saw the guest

    Examples:
      | network  |
      | default  |
      | isolated |

  @requires.network-profiles @requires.root
  Scenario: Services on the host's loopback stay out of reach even when the guest's network allows their port
    Given a service listens on the host's loopback only
    And a VM "sandbox" on a network filtered to the port of that service is running
    When the guest of "sandbox" tries every address the host could have for it
    Then the loopback service never saw the guest

  @requires.network-profiles
  Scenario: A VM cannot reach another VM over the network
    Given the VMs "sandbox" and "neighbour" are running
    And the guest of "neighbour" serves on port 8000
    When the guest of "sandbox" tries every address "neighbour" could have
    Then the guest of "neighbour" never heard from "sandbox"

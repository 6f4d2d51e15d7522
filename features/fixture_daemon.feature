@p0 @daemon @requires.qemu @requires.daemon
Feature: Fixture daemon
  Booting a real VM takes seconds, and test runs crash. The fixture daemon
  keeps restored VMs warm, so a scenario gets one in a blink, and it destroys
  every VM whose owner is gone, so a crashed run never leaves a VM behind.

  Background:
    Given a project whose config declares the VMs:
      | name   | cpus | memory | disk |
      | worker | 1    | 512M   | 2G   |

  @seed.001.1.1 @seed.002.create-vm-from-template
  Scenario: A lease gives a running VM from the warm pool
    When the scenario leases the VM "worker"
    Then the VM "worker" is running
    And the guest of "worker" answers a command
    And the VM "worker" was restored from a memory snapshot, not booted

  @seed.001.6.3
  Scenario: When a lease ends its VM is destroyed
    Given the scenario leased the VM "worker"
    When the lease ends
    Then the VM "worker" no longer exists
    And no VM process or disk file remains for "worker"

  @seed.001.6.3
  Scenario: A VM from the warm pool carries nothing from the previous lease
    Given the scenario leased the VM "worker"
    And the guest of "worker" has saved the note "secret of the last tenant"
    When the lease ends and the scenario leases the VM "worker" again
    Then the VM "worker" is a different VM process than before
    And the guest of "worker" has no note

  @seed.001.2.2
  Scenario: The VMs of a runner killed mid-scenario are destroyed within its TTL
    Given another runner holds the VM "worker" with a lease TTL of 5 seconds
    When that runner is killed with SIGKILL
    Then within 5 seconds the VM "worker" no longer exists
    And no VM process or disk file remains for "worker"

  @seed.001.3.5.3 @exclusive
  Scenario: A daemon killed with SIGKILL reaps what it left behind when started again
    Given another runner holds the VM "worker" with a lease TTL of 30 seconds
    When the daemon is killed with SIGKILL
    And that runner is killed with SIGKILL
    And the daemon is started again
    Then the daemon reports that it reclaimed the VM "worker"
    And no VM process or disk file remains for "worker"
    And the daemon's ledger agrees with the processes and files it owns

  @seed.001.3.5.2
  Scenario: Two runners at once get distinct VMs
    When two runners each hold the VM "worker" at the same time
    Then the two runners got different VM processes on different SSH ports

  @fixture.vm.shared @seed.001.1.1
  Scenario Outline: Scenarios that share a VM each find it as the one before left it
    Given the shared VM "worker" is running
    When scenario <turn> signs the guest book of "worker"
    Then the guest book of "worker" holds the signatures of scenarios 1 to <turn>
    And the VM "worker" is the same VM process in every scenario that shares it

    Examples:
      | turn |
      | 1    |
      | 2    |
      | 3    |

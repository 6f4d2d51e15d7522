@p0 @lifecycle @requires.qemu
Feature: VM lifecycle
  A coding agent works inside a VM of its own. The VM has to come up when the
  operator asks for it, go down when told, keep its disk across a restart and
  vanish without a trace when destroyed. Asking twice must be harmless, and a
  mistake in the config must be caught before anything is touched.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
      | tester  | 1    | 384M   | 2G   |

  @seed.000.p0-lifecycle @seed.001.3.1.1 @seed.004.1
  Scenario: A created VM runs and its guest answers
    When the operator creates the VM "builder"
    Then the VM "builder" is running
    And the guest of "builder" answers a command
    And the VM "builder" runs on the accelerator the harness reports

  @seed.000.p0-lifecycle @seed.001.3.1.2
  Scenario: Stopping a VM powers it off and ends its process
    Given the VM "builder" is running
    When the operator stops the VM "builder"
    Then the VM "builder" is stopped
    And no VM process remains for "builder"
    And the guest powered off on its own, without being forced

  @seed.001.3.1.2
  Scenario: A guest that ignores the power button is forced off after the deadline
    Given the VM "builder" is running
    And the guest of "builder" ignores the power button
    When the operator stops the VM "builder" with a 2 second deadline
    Then the guest was forced off after the deadline
    And the VM "builder" is stopped
    And no VM process remains for "builder"

  @seed.000.p0-lifecycle @seed.001.3.1.3
  Scenario: A stopped VM starts again with its disk intact
    Given the VM "builder" is running
    And the guest of "builder" has saved the note "nightly build green"
    And the operator has stopped the VM "builder"
    When the operator starts the VM "builder"
    Then the VM "builder" is running
    And the guest of "builder" still has the note "nightly build green"

  @seed.001.3.1.5
  Scenario: A VM that cannot boot is reported with the hypervisor's reason and leaves nothing running
    Given the VM "builder" is running
    And the operator has stopped the VM "builder"
    And the disk of "builder" has been damaged
    When the operator starts the VM "builder"
    Then the start is refused because the VM's disk is damaged
    And the VM "builder" is stopped
    And no VM process or socket remains for "builder"

  @seed.001.3.1.3 @seed.004.5
  Scenario: A restarted VM keeps what was written to its disk
    Given the VM "builder" is running
    And the guest of "builder" has saved the note "release 1.4 is ready"
    When the operator restarts the VM "builder"
    Then the VM "builder" is running
    And the guest of "builder" booted afresh
    And the guest of "builder" still has the note "release 1.4 is ready"

  @seed.000.p0-lifecycle @seed.001.3.1.4
  Scenario: Destroying one VM removes it and spares the others
    Given the VMs "builder" and "tester" are running
    When the operator destroys the VM "tester"
    Then the VM "tester" no longer exists
    And no VM process or disk file remains for "tester"
    And the VM "builder" is running

  @seed.000.p0-lifecycle
  Scenario: Every VM in the config is created at once
    When the operator creates all VMs in the config
    Then the VMs "builder" and "tester" are running

  @seed.000.p0-lifecycle
  Scenario: Every VM in the config is stopped at once
    Given the VMs "builder" and "tester" are running
    When the operator stops all VMs in the config
    Then the VMs "builder" and "tester" are stopped
    And no VM process remains for "builder" or "tester"

  @seed.000.p0-lifecycle
  Scenario: Destroying every VM in the config leaves nothing behind
    Given the VMs "builder" and "tester" are running
    When the operator destroys all VMs in the config
    Then the VMs "builder" and "tester" no longer exist
    And no VM process or disk file remains for "builder" or "tester"

  @seed.000.p0-lifecycle
  Scenario: Creating a VM again with the same spec is harmless
    Given the VM "builder" is running
    When the operator creates the VM "builder"
    Then the operator is told that "builder" already exists
    And the VM "builder" is still the same running VM

  @seed.000.p0-lifecycle @seed.004.4
  Scenario: Creating a VM again with another spec reports each difference and changes nothing
    Given the VM "builder" is running
    And the config now asks for "builder" with 2 cpus and 1G of memory
    When the operator creates the VM "builder"
    Then the operator is told of a mismatch:
      | field  | existing | requested |
      | cpus   | 1        | 2         |
      | memory | 512M     | 1G        |
    And the VM "builder" is still the same running VM

  @seed.004.8
  Scenario: A config with a bad field is refused, naming the file, line and field
    Given the config gives "builder" the memory "12 parsecs"
    When the operator creates the VM "builder"
    Then the command fails with a config error at line 4 of the config for "vms.builder.memory"
    And the VM "builder" does not exist

  @seed.001.3.1.5 @seed.004.8
  Scenario Outline: Acting on a VM that does not exist is a clear error
    When the operator <action> the VM "ghost"
    Then the command fails because no VM named "ghost" exists

    Examples:
      | action   |
      | starts   |
      | stops    |
      | destroys |

@p1 @vm-snapshots @requires.qemu @requires.memory-snapshots @seed.002.vm-snapshot-restore
Feature: VM snapshots
  Before an agent tries something drastic, the whole VM can be saved, memory
  and disk, while it keeps running, and later put back exactly as it was:
  the same files, the same processes.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
    And the VM "builder" is running

  Scenario: A restored VM has its files as they were at the snapshot
    Given the guest of "builder" has saved the note "before the experiment"
    And the operator saved the snapshot "clean" of "builder"
    And the guest of "builder" has saved the note "after the experiment"
    When the operator restores the snapshot "clean" of "builder"
    Then the guest of "builder" still has the note "before the experiment"

  Scenario: A restored VM has its processes running as they were
    Given the guest of "builder" runs the long process "sleep 4242"
    And the operator saved the snapshot "busy" of "builder"
    And the guest of "builder" stopped the process "sleep 4242"
    When the operator restores the snapshot "busy" of "builder"
    Then the process "sleep 4242" runs in the guest of "builder"

  Scenario: Restoring a snapshot that does not exist is refused and the VM keeps running
    When the operator restores the snapshot "nope" of "builder"
    Then the restore is refused because there is no snapshot "nope"
    And the VM "builder" is running

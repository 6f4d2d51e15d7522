@p1 @backups @requires.qemu
Feature: VM disk backups
  A VM's disk is backed up while it runs: one full backup, then incremental
  ones that hold only the blocks that changed. A chain of them restores into
  a new VM that boots with the data as it was.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
      | phoenix | 1    | 512M   | 2G   |
    And the VM "builder" is running

  Scenario: An incremental backup holds only the changed blocks
    Given the operator took a backup of "builder"
    When the guest of "builder" writes 1 MB of new data
    And the operator takes a backup of "builder"
    Then the second backup of "builder" is incremental
    And the incremental backup of "builder" is less than half the size of the full one

  Scenario: A restored backup boots and holds the data
    Given the guest of "builder" has saved the note "written before the full backup"
    And the operator took a backup of "builder"
    And the guest of "builder" has saved the note "written before the incremental backup"
    And the operator took a backup of "builder"
    When the operator restores the backups of "builder" as the VM "phoenix"
    Then the VM "phoenix" is running
    And the guest of "phoenix" still has the note "written before the incremental backup"

  Scenario: A chain with a missing link is refused and nothing is restored
    Given the operator took a backup of "builder"
    And the operator took a backup of "builder"
    And the full backup of "builder" has gone missing
    When the operator restores the backups of "builder" as the VM "phoenix"
    Then the command fails saying "missing link"
    And the VM "phoenix" does not exist

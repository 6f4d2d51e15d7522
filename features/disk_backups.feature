@p1 @disk-backups @requires.qemu @requires.dirty-bitmap-backups
Feature: VM disk backups
  A VM's disk is backed up while it runs: one full backup, then incremental
  ones that hold only the blocks that changed. A chain of them restores into
  a new VM that boots with the data as it was. Chains are grouped by period,
  old chains are pruned whole, and mistakes get documented exit codes.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
      | phoenix | 1    | 512M   | 2G   |
    And the VM "builder" is running

  @seed.003.2
  Scenario: An incremental backup holds only the changed blocks
    Given the operator took a backup of "builder"
    When the guest of "builder" writes 1 MB of new data
    And the operator takes a backup of "builder"
    Then the second backup of "builder" is incremental
    And the incremental backup of "builder" is less than half the size of the full one

  @seed.003.1
  Scenario: A restored backup boots and holds the data
    Given the guest of "builder" has saved the note "written before the full backup"
    And the operator took a backup of "builder"
    And the guest of "builder" has saved the note "written before the incremental backup"
    And the operator took a backup of "builder"
    When the operator restores the backups of "builder" as the VM "phoenix"
    Then the VM "phoenix" is running
    And the guest of "phoenix" still has the note "written before the incremental backup"

  @seed.003.6
  Scenario: A chain with a missing link is refused and nothing is restored
    Given the operator took a backup of "builder"
    And the operator took a backup of "builder"
    And the full backup of "builder" has gone missing
    When the operator restores the backups of "builder" as the VM "phoenix"
    Then the restore is refused because the backup chain has a missing link
    And the VM "phoenix" does not exist

  @seed.003.3
  Scenario: Backups are grouped into one chain per period
    When the operator takes a backup of "builder" grouped by quarter
    And the operator takes a backup of "builder" grouped by quarter
    Then the backups hold one chain, named after the current quarter, with a full and an incremental link

  @seed.003.3
  Scenario: Pruning keeps the newest chains whole and deletes the older ones
    Given the operator took 3 full backups of "builder"
    When the operator keeps only the newest backup chain
    Then only the newest of the 3 backup chains remains

  @seed.003.4
  Scenario: After the backup bitmap is scrubbed, the next backup is full
    Given the operator took a backup of "builder"
    When the operator scrubs the backup bitmap of "builder"
    And the operator takes a backup of "builder"
    Then the newest backup starts a new chain with a full link

  @seed.003.6
  Scenario Outline: A backup that cannot be taken says why, with its documented exit code
    Given <situation>
    When the operator tries to back up "<vm>"
    Then the disk backup is refused because <reason>

    Examples:
      | situation                                 | vm      | reason                     |
      | nothing else                              | ghost   | no VM named "ghost" exists |
      | the operator has stopped the VM "builder" | builder | "builder" is not running   |

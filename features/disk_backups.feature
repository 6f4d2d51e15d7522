@p1 @disk-backups @requires.qemu @requires.dirty-bitmap-backups
Feature: VM disk backups
  A VM's disk is backed up while it runs: one full backup, then incremental
  ones that hold only the blocks that changed. The hypervisor keeps a
  checkpoint for each backup, from which it counts the blocks written since.
  A chain of backups restores into a new VM that boots with the data as it
  was. Several VMs are backed up at once by a name pattern, chains are
  grouped by period, old chains are pruned whole, checkpoints can be
  scrubbed, the status reads for people and for machines, and a backup that
  cannot be taken says why without touching the backups already there.

  Background:
    Given a project whose config declares the VMs:
      | name     | cpus | memory | disk |
      | builder  | 1    | 512M   | 2G   |
      | phoenix  | 1    | 512M   | 2G   |
      | worker-1 | 1    | 512M   | 2G   |
      | worker-2 | 1    | 512M   | 2G   |
    And the VM "builder" is running

  @seed.003.2
  Scenario: An incremental backup holds only the changed blocks
    Given the operator took a backup of "builder"
    When the guest of "builder" writes 1 MB of new data
    And the operator takes a backup of "builder"
    Then the second backup of "builder" is incremental
    And the incremental backup of "builder" is less than half the size of the full one

  @seed.003.2
  Scenario: Each backup leaves the VM one more checkpoint
    When the operator takes a backup of "builder"
    Then the hypervisor keeps 1 backup checkpoint for "builder"
    When the operator takes a backup of "builder"
    Then the hypervisor keeps 2 backup checkpoints for "builder"
    When the operator takes a backup of "builder"
    Then the hypervisor keeps 3 backup checkpoints for "builder"

  @seed.003.1
  Scenario: A restored backup boots and holds the data
    Given the guest of "builder" has saved the note "written before the full backup"
    And the operator took a backup of "builder"
    And the guest of "builder" has saved the note "written before the incremental backup"
    And the operator took a backup of "builder"
    When the operator restores the backups of "builder" as the VM "phoenix"
    Then the VM "phoenix" is running
    And the guest of "phoenix" still has the note "written before the incremental backup"

  @seed.003.1
  Scenario: One name pattern backs up every running VM it matches
    Given the VMs "worker-1" and "worker-2" are running
    When the operator takes a backup of every VM matching "worker-*"
    Then "worker-1" and "worker-2" each have a full backup of their own
    And the hypervisor keeps 1 backup checkpoint for "worker-1"
    And the hypervisor keeps 1 backup checkpoint for "worker-2"
    And "builder" has no backup

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
  Scenario: After every checkpoint is scrubbed, the next backup is full
    Given the operator took a backup of "builder"
    When the operator scrubs the backup checkpoints of "builder"
    And the operator takes a backup of "builder"
    Then the newest backup starts a new chain with a full link

  @seed.003.4
  Scenario: Scrubbing one named checkpoint keeps the others
    Given the operator took 3 backups of "builder"
    When the operator scrubs the oldest backup checkpoint of "builder" by its name
    Then the hypervisor keeps the other 2 backup checkpoints of "builder"

  @seed.003.5
  Scenario: The backup status reads the same for people and for machines
    Given the operator took 2 backups of "builder"
    When the operator asks for the status of the backups, for people and for machines
    Then both name every backup chain and every checkpoint the hypervisor keeps for "builder"

  @seed.003.6
  Scenario: A missing backup tool is reported as such and nothing is written
    Given the host lacks the tools the disk backups need
    When the operator tries to back up "builder"
    Then the disk backup is refused because a tool is missing
    And "builder" has no backup

  @seed.003.6
  Scenario Outline: A backup that cannot be taken says why and changes no backup
    Given the operator took a backup of "builder"
    And <situation>
    When the operator tries to back up "<vm>"
    Then the disk backup is refused because <reason>
    And the backups already taken are unchanged and nothing was added

    Examples:
      | situation                             | vm       | reason                          |
      | nothing else                          | ghost    | no VM named "ghost" exists      |
      | nothing else                          | ghost-*  | no VM matches "ghost-*"         |
      | the VM "builder" has been stopped     | builder  | "builder" is not running        |

  @seed.003.6
  Scenario: A backup into a full destination fails cleanly and keeps the earlier backups
    Given the disk backups go to a destination with room for 400 MB
    And the operator took a backup of "builder"
    And the guest of "builder" has written 128 MB of new data
    When the operator tries to back up "builder"
    Then the disk backup is refused because the destination is full
    And the backups already taken are unchanged and nothing was added

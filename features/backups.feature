@p0 @backups @seed.000.p0-backups
Feature: Folder backups
  Whatever an agent does to a project, its earlier versions must still be
  there. Folder backups are cheap, complete snapshots: unchanged files are
  shared with the previous snapshot, a snapshot appears only when it is
  whole, and old snapshots are thinned so that recent history stays dense
  and old history sparse.

  Background:
    Given the project folder "work" holds "main.py" saying "print('v1')"
    And the project folder "work" holds "README.md" saying "the project"

  Scenario: The first backup is a complete snapshot
    When the operator backs up "work" once
    Then there is 1 snapshot of "work"
    And the newest snapshot of "work" holds "main.py" saying "print('v1')"

  Scenario: Unchanged files are shared with the previous snapshot
    Given the operator backed up "work" once
    And the host writes "print('v2')" to "work/main.py"
    When the operator backs up "work" once
    Then there are 2 snapshots of "work"
    And "README.md" is one and the same file in both snapshots of "work"
    And "main.py" differs between the snapshots of "work"

  Scenario: No new snapshot when nothing changed
    Given the operator backed up "work" once
    When the operator backs up "work" once
    Then the backup succeeds
    And there is 1 snapshot of "work"

  Scenario: A backup killed halfway leaves no snapshot that looks complete
    Given the project folder "work" holds 4000 small files
    When a backup of "work" is killed while it copies
    Then every snapshot of "work" holds all 4002 files
    And after the next backup of "work" no partial snapshot of "work" remains

  Scenario Outline: Repeated backups stop cleanly on <signal> and leave no partial snapshot
    Given repeated backups of "work" every second are running
    When the host writes "print('v2')" to "work/main.py"
    And the repeated backups take a new snapshot
    And the repeated backups receive <signal>
    Then the repeated backups stop with exit code 0
    And there are 2 snapshots of "work"
    And no partial snapshot of "work" remains

    Examples:
      | signal  |
      | SIGINT  |
      | SIGTERM |

  Scenario: Repeated backups of a mount take their settings from the config
    Given the config mounts "work" at "/work" in "builder" with backups to "saved/work" every second
    When repeated backups of the mount "work" are running
    And the repeated backups receive SIGTERM
    Then the repeated backups stop with exit code 0
    And there is 1 snapshot in "saved/work"

  Scenario: Repeated backups of every mount run at once
    Given the project folder "docs" holds "index.md" saying "the docs"
    And the config mounts "work" at "/work" in "builder" with backups to "saved/work" every second
    And the config mounts "docs" at "/docs" in "builder" with backups to "saved/docs" every second
    When repeated backups of every mount are running
    And the repeated backups receive SIGTERM
    Then the repeated backups stop with exit code 0
    And there is 1 snapshot in "saved/work"
    And there is 1 snapshot in "saved/docs"

  Scenario: tail keeps the newest snapshots
    Given 10 snapshots of "work" taken an hour apart
    When the operator keeps the last 3 snapshots of "work"
    Then the 3 newest of the 10 snapshots of "work" remain

  @reference
  Scenario: thin keeps a history whose spacing grows with age
    Given 30 snapshots of "work" taken an hour apart
    When the operator thins the snapshots of "work" to 8
    Then 8 snapshots of "work" remain, the newest and the oldest among them
    And the gaps between the kept snapshots of "work" grow with age

  Scenario: Backing up a folder that does not exist is refused
    Given the operator backed up "work" once
    When the operator backs up "nowhere" into the backups of "work"
    Then the backup is refused because the folder does not exist
    And the snapshots of "work" are untouched

  Scenario: Backing up into a read-only destination is refused
    Given the operator backed up "work" once
    And the backups of "work" are read-only
    And the host writes "print('v2')" to "work/main.py"
    When the operator backs up "work" once
    Then the backup is refused because the destination is not writable
    And the snapshots of "work" are untouched

  @reference
  Scenario: A corrupt previous snapshot stops the backup before anything changes
    Given the operator backed up "work" once
    And a corrupt snapshot lies among the backups of "work"
    And the host writes "print('v2')" to "work/main.py"
    When the operator backs up "work" once
    Then the backup is refused because a snapshot is corrupt
    And the snapshots of "work" are untouched

@p1 @workflow @requires.disk-hotplug @requires.memory-snapshots @requires.daemon
Feature: A VM's working life, from creation to destruction
  Each capability has its own rules; an operator uses them one after the
  other. This walks one VM through a working day: it is created, gets a data
  disk, keeps results on it, is snapshotted, stopped and started again, and
  finally handed back. The results survive the restart, nothing is left
  behind, and at no step do the records and reality disagree.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |

  @observer.each-step
  Scenario: Results on a data disk survive a snapshot and a restart, and nothing is left at the end
    When the operator creates the VM "builder"
    And the operator creates the disk "results" of 64M
    And the operator attaches the disk "results" to "builder"
    And the guest of "builder" writes the note "results of run 7" on the disk "results"
    And the operator saves the snapshot "before-restart" of "builder"
    And the operator stops the VM "builder"
    And the operator starts the VM "builder"
    Then the guest of "builder" reads the note "results of run 7" from the disk "results"
    When the operator detaches the disk "results"
    And the operator destroys the VM "builder"
    Then no VM process or disk file remains for "builder"
    And the observer found nothing amiss after any step

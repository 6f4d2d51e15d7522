@p1 @disks @requires.qemu @requires.disk-hotplug
Feature: Data disks
  An agent's work often needs more room than its VM's own disk, or data that
  should outlive one VM. The operator creates a data disk, plugs it into a
  running VM and unplugs it again, without stopping the VM or anything running
  in it. A disk is in one VM at a time, what is written on it stays on it,
  and it is never deleted while a VM uses it.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
      | tester  | 1    | 512M   | 2G   |
    And the VM "builder" is running

  Scenario: A disk attached to a running VM appears in its guest with its size
    Given the operator created the disk "scratch" of 64M
    When the operator attaches the disk "scratch" to "builder"
    Then the guest of "builder" sees the disk "scratch" as a new disk of 64M
    And the VM "builder" kept running without a restart

  Scenario: A detached disk disappears from the guest
    Given the disk "scratch" of 64M is attached to "builder"
    When the operator detaches the disk "scratch"
    Then the guest of "builder" no longer sees the disk "scratch"
    And the VM "builder" kept running without a restart

  Scenario: Plugging a disk in and out does not disturb what runs in the guest
    Given the guest of "builder" keeps the process "sleep 4243" running
    And the operator created the disk "scratch" of 64M
    When the operator attaches the disk "scratch" to "builder"
    And the operator detaches the disk "scratch"
    Then the process "sleep 4243" still runs in the guest of "builder" as the same process
    And the VM "builder" kept running without a restart

  Scenario: Files written on a disk survive detaching it and attaching it again
    Given the disk "scratch" of 64M is attached to "builder"
    And the guest of "builder" wrote the note "results of run 7" on the disk "scratch"
    When the operator detaches the disk "scratch"
    And the operator attaches the disk "scratch" to "builder"
    Then the guest of "builder" reads the note "results of run 7" from the disk "scratch"

  Scenario: Deleting a detached disk removes its file
    Given the disk "scratch" of 64M was attached to "builder" and detached again
    When the operator deletes the disk "scratch"
    Then the file of the disk "scratch" is gone
    And the disk "scratch" is no longer listed

  Scenario: Deleting a disk that is attached is refused and the guest keeps it
    Given the disk "scratch" of 64M is attached to "builder"
    When the operator deletes the disk "scratch"
    Then it is refused because the disk "scratch" is in use
    And the guest of "builder" still sees the disk "scratch"
    And the file of the disk "scratch" is still there

  Scenario: Attaching a disk that does not exist is refused
    When the operator attaches the disk "nowhere" to "builder"
    Then it is refused because there is no disk "nowhere"
    And the guest of "builder" sees no new disk

  Scenario: A disk attached to one VM cannot be attached to another
    Given the VM "tester" is running
    And the disk "scratch" of 64M is attached to "builder"
    When the operator attaches the disk "scratch" to "tester"
    Then it is refused because the disk "scratch" is in use
    And the guest of "tester" sees no new disk
    And the guest of "builder" still sees the disk "scratch"

  @observer.drift @requires.daemon
  Scenario: A disk plugged into a VM behind the records' back is reported
    When a disk is plugged into "builder" behind the records' back
    Then within one observer interval the observer reports "disk-unrecorded" for "builder"

  @observer.drift @requires.daemon
  Scenario: A data disk whose file vanished is reported
    Given the disk "scratch" of 64M is attached to "builder"
    When the file of the disk "scratch" is deleted on the host
    Then within one observer interval the observer reports "disk-missing" for "scratch.qcow2"

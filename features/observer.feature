@p0 @observer @requires.qemu @requires.daemon @seed.001.3.3
Feature: Observer
  The ledger holds what the harness believes exists; the observer checks that
  belief against the machine: processes, disk files, mounts inside guests.
  When they disagree it says what, where, on what evidence and how to fix it,
  within one observer interval, and it never cries wolf on a healthy run.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | watched | 1    | 512M   | 2G   |
    And the VM "watched" is running

  @observer.drift @seed.001.3.3.1
  Scenario: A VM whose process died is reported
    When the process of VM "watched" is killed with SIGKILL
    Then within one observer interval the observer reports "vm-not-running" for "watched"

  @observer.drift @seed.001.3.3.3
  Scenario: A disk file deleted behind the ledger's back is reported
    When the disk file of "watched" is deleted
    Then within one observer interval the observer reports "disk-missing" for "watched"

  @observer.drift @seed.001.3.3.2
  Scenario: A stray VM process named like the project's is reported
    When a stray VM process named like the project's runs in the storage
    Then within one observer interval the observer reports "orphan-process" for the stray VM process

  @observer.drift @seed.001.3.3.4
  Scenario: A stray file dropped into the storage is reported
    When a stray disk file is dropped into the storage
    Then within one observer interval the observer reports "orphan-disk" for "stray.qcow2"

  @observer.drift
  Scenario: A mount unmounted inside the guest is reported
    Given the project folder "app" holds "README.md" saying "hi"
    And the config mounts "app" at "/work/app" in "watched"
    And the operator mounted "app"
    When the guest of "watched" unmounts "/work/app" on its own
    Then within one observer interval the observer reports "mount-missing" for "watched:/work/app"

  @observer.drift
  Scenario: A tunnel whose forwarder was killed is reported
    Given the config forwards host port 18280 to port 8000 of "watched"
    And port forwarding runs
    When the forwarder is killed with SIGKILL
    Then within one observer interval the observer reports "tunnel-down" for "127.0.0.1:18280"

  @observer.drift @exclusive
  Scenario: The observer's safe fix kills a stray VM process and says so
    Given a stray VM process named like the project's runs in the storage
    When the operator runs the observer with its safe fixes
    Then the observer says it killed the stray VM process
    And the stray VM process is gone

  @observer.drift @seed.001.3.5.3
  Scenario: After a crashed VM is restarted, the next report is clean
    Given the process of VM "watched" was killed and the observer reported "vm-not-running"
    When the operator starts the VM "watched"
    Then the next observer report is clean

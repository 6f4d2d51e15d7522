@p0 @connectivity @requires.qemu @seed.000.p0-connectivity
Feature: Reaching a VM and seeing what it is doing
  An operator gets into an agent's VM the way they get into any machine:
  over SSH, with a key made for this installation, or with a shell. And one
  look at the status tells them what each VM of the project is doing: is it
  up, what does it have, is the project mounted, when was it last backed up,
  and is the agent at work.

  Background:
    Given a project whose config declares the VMs:
      | name   | cpus | memory | disk |
      | devbox | 1    | 512M   | 2G   |
    And the VM "devbox" is running

  @seed.004.2
  Scenario: The operator runs a command in the VM over SSH
    When the operator runs "cat /proc/sys/kernel/hostname" in "devbox" over SSH
    Then the operator sees "devbox"
    And the installation's SSH key can be read by its owner only

  Scenario: A shell in the VM runs what the operator types
    When the operator types "echo 42 > /root/answer" into a shell on "devbox"
    Then the guest of "devbox" still has "/root/answer" saying "42"

  Scenario: The status shows each VM with its mounts, last backup and the agent at work
    Given the project folder "repo" holds "README.md" saying "hello"
    And the config mounts "repo" at "/work/repo" in "devbox"
    And the config declares the reference agent "scribe"
    And the agent "scribe" is installed
    And the operator backed up "repo" once
    And the task in "repo" is:
      """
      wait GO
      """
    And the agent "scribe" is at work in "devbox"
    And the config now asks for "devbox" with 2 cpus and 1G of memory
    When the operator asks for the status
    Then the status shows "devbox" running with 1 cpu and 512M of memory
    And the status shows "repo" mounted at "/work/repo" with its last backup
    And the status shows the agent "scribe" at work

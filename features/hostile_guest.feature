@p0 @security @requires.qemu
Feature: A hostile guest costs the host bounded resources
  A guest the agent controls can do more than try to break out: it can flood
  its console, answer the harness's agent channel with garbage, fill its disk
  or fork without end. None of that may exhaust the host's memory, disk or
  processors, slow down other VMs, or leave the harness hanging: the operator
  gets a clear error in bounded time, and the host pays a bounded price. Each
  scenario misbehaves from inside the guest, as root, and measures the cost on
  the host.

  Background:
    Given a project whose config declares the VMs:
      | name      | cpus | memory | disk |
      | sandbox   | 1    | 512M   | 2G   |
      | neighbour | 1    | 512M   | 2G   |

  Scenario: A guest that floods its console costs the host bounded memory
    Given the VM "sandbox" is running
    And the operator has printed the console of "sandbox" while it was quiet
    And the guest of "sandbox" has flooded its console with 6 MiB, and goes on
    When the operator prints the console of "sandbox"
    Then printing the flooded console took no more memory than printing the quiet one, give or take 3 MiB
    And the guest of "sandbox" answers a command

  Scenario Outline: A guest that answers its agent channel with <garbage> gets a clear error, at a bounded cost to the host
    Given the VM "sandbox" is running
    And the operator has run "uname" in "sandbox" while its agent was sound
    And the guest of "sandbox" answers its agent channel with <garbage>
    When the operator runs "uname" in "sandbox"
    Then the command fails with a clear error within 60 seconds, using at most 48 MiB more memory than before
    And the harness, asking the guest of "sandbox" itself, gets a clear error and keeps its memory within 48 MiB

    Examples:
      | garbage                    |
      | endless bytes              |
      | broken JSON                |
      | answers of the wrong shape |

  Scenario: A guest that writes its disk to the end and beyond stays within the disk its config declares
    Given the VMs "sandbox" and "neighbour" are running
    When the guest of "sandbox" writes its disk to the end and beyond
    Then the guest of "sandbox" was told that its disk is full
    And the disk file of "sandbox" on the host can hold no more than the 2G its config declares
    And the guest of "neighbour" answers a command

  Scenario: A guest that forks without end harms neither the host nor other VMs
    Given the VMs "sandbox" and "neighbour" are running
    When the guest of "sandbox" forks without end
    Then the VM "sandbox" uses no more of the host's processors than its 1 cpu
    And the guest of "neighbour" answers a command

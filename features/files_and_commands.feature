@p1 @files @requires.qemu
Feature: Files in and out of a VM, and commands run in it
  An operator hands an agent's VM the files it needs, takes its results back
  out, and runs commands in it in the right folder, with the right settings
  and as the right user. A file arrives whole and unchanged, with its
  permissions, however large it is, and copying a large file takes no more
  memory than copying a small one. A copy that cannot be done leaves nothing
  behind. A command that fails says how it failed. A VM asks only for what
  this machine can really run.

  Background:
    Given a project whose config declares the VMs:
      | name   | cpus | memory | disk |
      | devbox | 1    | 512M   | 2G   |

  Scenario: A file copied into the VM arrives unchanged, with its permissions
    Given the VM "devbox" is running
    And the project folder holds a 200 KiB file "tools/build.sh" with mode 0750
    When the operator copies "tools/build.sh" into "devbox" as "/root/build.sh"
    Then the guest of "devbox" holds "/root/build.sh" with the content of "tools/build.sh" and mode 0750

  Scenario: A file copied out of the VM arrives unchanged, with its permissions
    Given the VM "devbox" is running
    And the guest of "devbox" holds a 1 MiB file "/root/report.bin" with mode 0640
    When the operator copies "/root/report.bin" out of "devbox" to "report.bin"
    Then the project folder holds "report.bin" with the content of "/root/report.bin" in "devbox" and mode 0640

  Scenario: A large file is streamed in and out without being held in memory
    Given the VM "devbox" is running
    And the project folder holds a 1 KiB file "small.bin" with mode 0644
    And the project folder holds a 64 MiB file "big.bin" with mode 0644
    When the operator copies "small.bin" into "devbox" as "/root/small.bin", its memory watched
    And the operator copies "big.bin" into "devbox" as "/root/big.bin", its memory watched
    And the operator copies "/root/big.bin" out of "devbox" to "back.bin", its memory watched
    Then the guest of "devbox" holds "/root/big.bin" with the content of "big.bin" and mode 0644
    And the project folder holds "back.bin" with the content of "/root/big.bin" in "devbox" and mode 0644
    And no copy of the large file took more than 16 MiB of memory beyond the small copy

  Scenario: Copying into a folder the VM does not have is refused and leaves nothing behind
    Given the VM "devbox" is running
    And the project folder holds a 1 KiB file "notes.txt" with mode 0644
    When the operator copies "notes.txt" into "devbox" as "/root/missing/notes.txt"
    Then the copy is refused because the guest folder "/root/missing" does not exist
    And the guest of "devbox" has no file named like "notes.txt" under "/root"

  Scenario: Copying out into a folder the host does not have is refused and leaves nothing behind
    Given the VM "devbox" is running
    And the guest of "devbox" holds a 1 KiB file "/root/report.bin" with mode 0640
    When the operator copies "/root/report.bin" out of "devbox" to "missing/report.bin"
    Then the copy is refused because the project folder "missing" does not exist
    And the project folder has no file named like "report.bin"

  Scenario: A command runs in the working folder and with the environment it is given
    Given the VM "devbox" is running
    And the guest of "devbox" has a folder "/srv/app"
    When the operator runs in "devbox", in the folder "/srv/app" and with GREETING set to "hello world":
      """
      pwd > where.txt; printf '%s\n' "$GREETING" > greeting.txt
      """
    Then the guest of "devbox" holds "/srv/app/where.txt" saying "/srv/app"
    And the guest of "devbox" holds "/srv/app/greeting.txt" saying "hello world"

  Scenario: A failing command reports its exit code and its error output
    Given the VM "devbox" is running
    When the operator runs in "devbox":
      """
      echo "disk full" >&2; exit 3
      """
    Then the command is reported failed with exit code 3 and the error output "disk full"

  Scenario: A working folder the VM does not have is refused
    Given the VM "devbox" is running
    When the operator runs in "devbox", in the folder "/nowhere":
      """
      touch /root/ran
      """
    Then the command is refused because the guest folder "/nowhere" does not exist
    And the guest of "devbox" has no "/root/ran"

  Scenario: Commands run as the guest user the config names
    Given the config gives "devbox" the guest user "nobody"
    And the VM "devbox" is running
    When the operator runs in "devbox":
      """
      id -un > /tmp/who
      """
    Then the guest of "devbox" holds "/tmp/who" saying "nobody", owned by "nobody"

  Scenario: A guest user the VM does not have is refused
    Given the VM "devbox" is running
    When the operator runs in "devbox", as the guest user "ghost":
      """
      touch /tmp/ran
      """
    Then the command is refused because the guest has no user "ghost"
    And the guest of "devbox" has no "/tmp/ran"

  Scenario: An architecture this machine cannot run is refused, naming what is missing
    Given this machine has no emulator for "aarch64"
    And the config gives "devbox" the architecture "aarch64"
    When the operator creates the VM "devbox"
    Then the creation is refused for the architecture "aarch64", naming the missing "qemu-system-aarch64"
    And nothing was created for the VM "devbox"

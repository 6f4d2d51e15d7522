@p0 @mounts @requires.qemu @seed.000.p0-mounts
Feature: Host folders mounted in VMs
  An agent works on the user's project from inside its VM. The project folder
  on the host is mounted into the VM, so what the agent writes lands on the
  host at once and what the user edits is what the agent sees. Mounts come and
  go while the VM runs, and a mistake never leaves the config half-written.

  Background:
    Given a project whose config declares the VMs:
      | name    | cpus | memory | disk |
      | builder | 1    | 512M   | 2G   |
    And the project folder "app" holds "README.md" saying "hello from the host"
    And the config mounts "app" at "/work/app" in "builder"
    And the VM "builder" is running

  Scenario: A mounted folder is visible in the VM
    When the operator mounts "app"
    Then the guest of "builder" reads "hello from the host" in "/work/app/README.md"

  Scenario: A file written in the guest appears on the host, owned by the host user
    Given the operator mounted "app"
    When the guest of "builder" writes "built in the VM" to "/work/app/build.log"
    And the guest of "builder" hands "/work/app/build.log" to user 1000
    Then the host file "app/build.log" says "built in the VM"
    And the host file "app/build.log" belongs to the host user

  Scenario: A file written on the host appears in the guest
    Given the operator mounted "app"
    When the host writes "ship it" to "app/TODO.md"
    Then the guest of "builder" reads "ship it" in "/work/app/TODO.md"

  Scenario: After unmounting, the folder is gone from the VM
    Given the operator mounted "app"
    When the operator unmounts "app"
    Then the guest of "builder" has no mount at "/work/app"
    And no process serves the mount of "app" any more

  Scenario: Unmounting ends the host side of the mount, even one that hangs
    Given the operator mounted "app"
    And the host side of the mount of "app" hangs
    When the operator unmounts "app"
    Then the guest of "builder" has no mount at "/work/app"
    And no process serves the mount of "app" any more

  Scenario: Every mount of the config is mounted at once
    Given the project folder "docs" holds "index.md" saying "the docs"
    And the config mounts "docs" at "/work/docs" in "builder"
    When the operator mounts all folders of the config
    Then the guest of "builder" reads "hello from the host" in "/work/app/README.md"
    And the guest of "builder" reads "the docs" in "/work/docs/index.md"

  Scenario: Adding a mount writes it to the config and mounts it at once
    Given the project folder "assets" holds "logo.txt" saying "a logo"
    When the operator adds a mount of "assets" at "/work/assets" in "builder"
    Then the config lists a mount of "assets" at "/work/assets" in "builder"
    And the guest of "builder" reads "a logo" in "/work/assets/logo.txt"

  Scenario: Removing a mount unmounts it first, then drops it from the config
    Given the operator mounted "app"
    When the operator removes the mount "app"
    Then the guest of "builder" has no mount at "/work/app"
    And the config no longer lists a mount of "app"

  Scenario: A mount still in use is kept, and so is its entry in the config
    Given the operator mounted "app"
    And a guest process of "builder" is working inside "/work/app"
    When the operator tries to remove the mount "app"
    Then the removal is refused because "/work/app" is in use
    And the config is unchanged
    And the guest of "builder" reads "hello from the host" in "/work/app/README.md"

  Scenario: A mount given by a relative path is unmounted by another spelling of it
    Given the project folder "libs/core/src" holds "core.py" saying "VERSION = 2"
    And the config mounts "./libs/core/../core/src" at "/work/core" in "builder"
    And the operator mounted "./libs/core/../core/src"
    When the operator unmounts "libs/core/src"
    Then the guest of "builder" has no mount at "/work/core"

  Scenario: Relative and nested paths resolve against the config's folder
    Given the project folder "libs/core/src" holds "core.py" saying "VERSION = 2"
    And the config mounts "./libs/core/../core/src" at "/work/core" in "builder"
    When the operator mounts "./libs/core/../core/src"
    Then the guest of "builder" reads "VERSION = 2" in "/work/core/core.py"

  Scenario: Adding a mount of a folder that does not exist is refused
    When the operator adds a mount of "missing" at "/work/missing" in "builder"
    Then adding the mount is refused because the folder does not exist
    And the config is unchanged

  Scenario: Adding a mount at a guest path already in use is refused
    Given the project folder "other" holds "x.txt" saying "x"
    And the operator mounted "app"
    When the operator adds a mount of "other" at "/work/app" in "builder"
    Then adding the mount is refused because another mount already uses "/work/app"
    And the config is unchanged

  Scenario: Mounting into a VM that is not running is refused
    Given the operator stopped the VM "builder"
    When the operator mounts "app"
    Then mounting is refused because "builder" is not running

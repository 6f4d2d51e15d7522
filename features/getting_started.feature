@p2 @cli
Feature: Getting started with a project
  A team trying vmfixtures for the first time starts from a commented example
  config that is valid as written, and never loses a config they already
  have. The version says what is installed, down to the QEMU it drives.

  @seed.000.p2-config
  Scenario: A new project gets an example config that passes the check
    Given an empty project folder
    When the operator asks for the example config
    Then the project has a config declaring the VM "builder"
    And checking the config finds it valid

  @seed.000.p2-config
  Scenario: The example never overwrites an existing config
    Given a project whose config declares the VMs:
      | name  | cpus | memory | disk |
      | atlas | 2    | 1G     | 4G   |
    When the operator asks for the example config
    Then the operator is told that the config already exists
    And the config is unchanged

  @seed.000.p2-maintenance
  Scenario: The version names vmfixtures, Python and QEMU
    When the operator asks for the version
    Then the operator sees the installed vmfixtures version, the Python version and the QEMU version

@p0 @agents @requires.qemu @seed.000.p0-agents
Feature: Agent runs in a mounted project
  A coding agent is installed into its VM from an artifact the host provides
  (the VM has no internet), then works in the mounted project. Its edits land
  on the host, and the project is backed up before and while it works, so
  nothing it does is beyond repair.

  Background:
    Given a project whose config declares the VMs:
      | name     | cpus | memory | disk |
      | agentbox | 1    | 512M   | 2G   |
    And the project folder "repo" holds "TASK.md" saying "write hello.txt: Hello from the agent"
    And the config mounts "repo" at "/work/repo" in "agentbox"
    And the config declares the reference agent "scribe"
    And the VM "agentbox" is running

  Scenario: An agent is installed from the host's artifact
    When the operator installs the agent "scribe"
    Then the agent "scribe" can be started in "agentbox"

  Scenario: Every agent of the config is installed at once
    Given the config declares the script agent "notes" that prints "notes 1.0"
    When the operator installs all agents
    Then the agent "scribe" can be started in "agentbox"
    And the agent "notes" can be started in "agentbox"

  Scenario: The agent starts in the mounted project folder
    Given the agent "scribe" is installed
    When the operator runs the agent "scribe"
    Then the run ends with exit code 0
    And the agent reports that it works in "/work/repo"

  Scenario: The agent's edits land on the host
    Given the agent "scribe" is installed
    When the operator runs the agent "scribe"
    Then the host file "repo/hello.txt" says "Hello from the agent"

  Scenario: With backups on, the project is snapshotted before the agent starts
    Given the agent "scribe" is installed
    When the operator runs the agent "scribe"
    Then the first backup of "repo" holds "TASK.md" but not "hello.txt"
    And the last backup of "repo" holds "hello.txt"

  Scenario: While the agent works, the backup loop keeps snapshotting the project
    Given the agent "scribe" is installed
    And the mount "repo" is backed up every second
    And the task in "repo" is:
      """
      write draft.txt: first draft
      wait GO
      write final.txt: done
      """
    When the agent "scribe" is at work in "agentbox"
    Then while the agent works, a backup of "repo" holds "draft.txt" but not "final.txt"
    When the host writes "go" to "repo/GO"
    Then the agent's run ends with exit code 0
    And the last backup of "repo" holds "final.txt"

  Scenario: With backups disabled, no snapshot is taken
    Given the agent "scribe" is installed
    When the operator runs the agent "scribe" with backups disabled
    Then the run ends with exit code 0
    And there is no backup of "repo"

  Scenario: The agent's exit code and message come back
    Given the agent "scribe" is installed
    And the project folder "repo" holds "TASK.md" saying "replace missing.txt: old => new"
    When the operator runs the agent "scribe"
    Then the run ends with exit code 3
    And the operator sees the agent say "no such file"

  Scenario: Running an agent the config does not declare is refused
    When the operator runs the agent "ghost"
    Then the run is refused because the config declares no agent "ghost"
    And the config is unchanged

  Scenario: Installing an agent whose artifact is missing is refused
    Given the config declares the wheel agent "phantom" from "dist/phantom-1.0-py3-none-any.whl"
    When the operator installs the agent "phantom"
    Then the installation is refused because the artifact of "phantom" is missing
    And the config is unchanged

  @requires.claude
  Scenario: A real agent CLI runs through the same definition
    Given the config declares the npm agent "claude" from the tarball in VMFIXTURES_CLAUDE_TARBALL
    And the agent "claude" is installed
    When the operator runs the agent "claude" with the task in TASK.md
    Then the run ends with exit code 0
    And the host file "repo/hello.txt" says "Hello from the agent"

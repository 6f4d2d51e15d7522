@p1 @networks @requires.network-profiles @requires.root
Feature: What a VM's network lets the guest reach
  An AI agent in a sandbox VM needs some of the network (package mirrors,
  git hosts) and must get nothing else. The operator picks one of three
  networks for each VM: open (the default), filtered to a list of allowed
  ports, or isolated. Whatever the guest does, it reaches what its network
  allows and nothing more; and the VM tells where it is on its network.

  Scenario: Under a filtered network, a service on an allowed port answers
    Given a test network with services on ports 443 and 5432
    And a VM "sandbox" on a network filtered to port 443 is running
    When the guest of "sandbox" connects to the test service on port 443
    Then the test service on port 443 answered the guest

  Scenario: Under a filtered network, a service on any other port never hears from the guest
    Given a test network with services on ports 443 and 5432
    And a VM "sandbox" on a network filtered to port 443 is running
    When the guest of "sandbox" connects to the test services on ports 443 and 5432
    Then the test service on port 443 answered the guest
    And the test service on port 5432 never saw the guest

  Scenario: An isolated VM reaches nothing
    Given a test network with services on ports 443 and 5432
    And a VM "sandbox" on the isolated network is running
    When the guest of "sandbox" connects to the test services on ports 443 and 5432
    Then the test services on ports 443 and 5432 never saw the guest

  Scenario: The default network reaches any port
    Given a test network with services on ports 443 and 5432
    And a VM "sandbox" on the default network is running
    When the guest of "sandbox" connects to the test service on port 5432
    Then the test service on port 5432 answered the guest

  Scenario: A VM reports its network and the address its guest has
    Given a VM "sandbox" on a network filtered to port 443 is running
    When the operator asks for the network of "sandbox"
    Then the operator is told the network is filtered to port 443
    And the operator is told the address the guest of "sandbox" has

  Scenario Outline: A network setting that makes no sense is refused
    Given the config gives "sandbox" the network <setting>
    When the operator creates the VM "sandbox"
    Then the command fails with a config error at line <line> of the config for "<field>"
    And the VM "sandbox" does not exist

    Examples:
      | setting                                    | line | field                        |
      | {"profile": "walled-garden"}               | 4    | vms.sandbox.network.profile  |
      | {"profile": "filtered", "allow": ["http"]} | 6    | vms.sandbox.network.allow[0] |
      | {"profile": "filtered", "allow": [70000]}  | 6    | vms.sandbox.network.allow[0] |
      | {"profile": "isolated", "allow": [443]}    | 5    | vms.sandbox.network.allow    |

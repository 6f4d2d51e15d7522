@p0 @forwarding @requires.qemu
Feature: Port forwarding
  The agent's dev server runs inside its VM, but the developer opens it in a
  browser on the host; the agent needs a licence server that only the host can
  reach; tools on the host want a proxy whose traffic leaves from the VM.
  Tunnels carry all three. They listen on the host's loopback unless asked
  otherwise, come back on their own when they break, and leave nothing behind
  when stopped.

  Background:
    Given a project whose config declares the VMs:
      | name   | cpus | memory | disk |
      | devbox | 1    | 512M   | 2G   |
    And the VM "devbox" is running

  @seed.000.p1-forwarding
  Scenario: A web app running in the VM is opened from the host
    Given the VM "devbox" serves "build 42 is green" on its port 8000
    And the config forwards host port 18080 to port 8000 of "devbox"
    When the operator starts port forwarding
    Then the host gets "build 42 is green" from 127.0.0.1:18080
    And host port 18080 listens on 127.0.0.1 only

  @seed.000.p1-forwarding
  Scenario: A service on the host is reached from inside the VM
    Given the host serves "licence server ok" on its port 19000
    And the config forwards port 9000 of "devbox" to host port 19000
    When the operator starts port forwarding
    Then the guest of "devbox" gets "licence server ok" from 127.0.0.1:9000

  @seed.000.p1-forwarding
  Scenario: A SOCKS5 proxy on the host reaches what only the VM can see
    Given the VM "devbox" serves "internal dashboard" on its port 8000
    And the config offers a SOCKS5 proxy into "devbox" on host port 11080
    When the operator starts port forwarding
    Then through the proxy on port 11080 the host gets "internal dashboard" from the VM's 127.0.0.1:8000

  @seed.000.p0-connectivity
  Scenario: A tunnel whose ssh process dies is restored
    Given the VM "devbox" serves "build 42 is green" on its port 8000
    And the config forwards host port 18080 to port 8000 of "devbox"
    And port forwarding runs
    When the ssh process of the tunnel on host port 18080 is killed
    Then the tunnel on host port 18080 is listening again in a new process
    And the host gets "build 42 is green" from 127.0.0.1:18080

  @seed.000.p0-connectivity
  Scenario: Stopping port forwarding leaves no tunnel behind
    Given the config forwards host port 18080 to port 8000 of "devbox"
    And the config offers a SOCKS5 proxy into "devbox" on host port 11080
    And port forwarding runs
    When the operator stops port forwarding
    Then no ssh process of the tunnels remains
    And nothing listens on host ports 18080 and 11080

  @seed.000.p1-forwarding
  Scenario: A host port already in use is refused, naming the port and who holds it
    Given the host serves "something else" on its port 18080
    And the config forwards host port 18080 to port 8000 of "devbox"
    When the operator starts port forwarding
    Then port forwarding is refused, naming host port 18080 and the process that holds it

  @seed.000.p1-forwarding
  Scenario: A forward to a VM the config does not declare is refused, naming the field
    Given the config forwards host port 18080 to port 8000 of "ghost"
    When the operator starts port forwarding
    Then the command fails with a config error for "forwards[0].vm"

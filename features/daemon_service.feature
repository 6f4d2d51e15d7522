@p1 @daemon @requires.systemd @seed.000.p1-systemd
Feature: The fixture daemon as a systemd service
  On a shared CI host the daemon should be there after every reboot, owned by
  systemd, and gone without a trace when the team uninstalls it.

  Scenario: The daemon installed as a service starts, answers and is removed cleanly
    When the operator installs the daemon as a systemd service
    Then systemd reports the service active and its daemon answers on the socket
    When the operator uninstalls the service
    Then systemd no longer runs the service and nothing answers on the socket

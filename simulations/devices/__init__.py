"""Simulated devices for ``fedge-sim``: profiles, the fleet's mix, simulated time and energy.

:mod:`~fedge.simulations.devices.profile` prices one device's work,
:mod:`~fedge.simulations.devices.fleet` deals profiles to clients from the ``device``
config group, and :mod:`~fedge.simulations.devices.simulator` is the
:class:`~fedge.server.delivery_observer.DeliveryObserver` a Grid calls around deliveries.
"""

package protocol

// Forget drops everything the controller holds for device id: the device
// is retired (controllerlite delete). A later message of it makes it a new
// device.
func (c *Controller) Forget(id string) {
	delete(c.devices, id)
	delete(c.greet, id)
}
